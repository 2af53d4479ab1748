"""Files and paths: what survives DVC experiment copies, atomic writes, locks.

``dvc exp run --temp/--queue`` runs every stage in a throw-away copy of the repository under
``<repo>/.dvc/tmp/exps/``, and a study on a SLURM cluster runs each point in a clone under
``<repo>/.lightsaft/slurm/clones/``. User data and shared state (MLflow database, downloads, training
checkpoints) belong to the main repository; files a stage writes into its own outputs move with
the copy and are therefore recorded relative to the file that names them.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

COPIES = ((".dvc", "tmp", "exps"), (".lightsaft", "slurm", "clones"))  # DVC's experiment copies, cluster clones


def project_root(start: str | Path | None = None) -> Path:
    """The main repository: ``DVC_ROOT`` or the nearest DVC project above ``start`` (cwd),
    stepping out of DVC experiment copies (``.dvc/tmp/exps/...``) and cluster clones
    (``.lightsaft/slurm/clones/...``: ``dvc exp run`` sets ``DVC_ROOT`` to the clone)."""
    path = Path(start or os.environ.get("DVC_ROOT") or os.getcwd()).resolve()
    parts = path.parts
    for i in range(len(parts) - 3):
        if parts[i : i + 3] in COPIES:
            return Path(*parts[:i])
    for candidate in (path, *path.parents):
        if (candidate / ".dvc").is_dir() or (candidate / "dvc.yaml").is_file():
            return candidate
    return path


def in_project(path: str | Path) -> Path:
    """A user-given path (``data.root``, ``data.archive``): relative ones are relative to the main
    repository, so queued experiments find the data the user put there."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else project_root() / path


def portable(path: str | Path, base: str | Path, movable: str | Path) -> str:
    """How to record ``path`` in a file that lives in ``base``: relative when the path lies in
    ``movable`` (a stage output folder, which moves with an experiment copy), absolute otherwise
    (user data such as ``data/musdb18``, which stays in the main repository)."""
    path = Path(os.path.abspath(path))  # not resolve(): links (DVC's symlink cache type) stay links
    if path.is_relative_to(os.path.abspath(movable)):
        return os.path.relpath(path, os.path.abspath(base))
    return str(path)


def resolve(recorded: str, base: str | Path) -> Path:
    """Inverse of :func:`portable`."""
    return Path(recorded) if os.path.isabs(recorded) else Path(base) / recorded


@contextmanager
def file_lock(path: str | Path, wait: bool = True) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if needed), for processes that share state:
    queued experiments, DDP ranks. ``wait=False`` raises ``BlockingIOError`` if it is taken."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only on success.

    The temporary name is unique (pid + random) and the file is created by the writer, so it
    gets the usual permissions (``mkstemp`` would make it owner-only).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path`` that replaces ``path`` only on success, so an
    interrupted stage never leaves a folder that looks complete. The temporary name is fixed:
    what a killed run (SIGKILL) left behind is removed by the next run."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a small text file (metrics, run records) through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file, read in 1 MB blocks (checkpoints are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
