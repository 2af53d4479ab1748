"""Paths that survive DVC experiment copies.

``dvc exp run --temp/--queue`` runs every stage in a throw-away copy of the repository under
``<repo>/.dvc/tmp/exps/``. User data and shared state (MLflow database, downloads, training
checkpoints) belong to the main repository; files a stage writes into its own outputs move with
the copy and are therefore recorded relative to the file that names them.
"""

from __future__ import annotations

import os
from pathlib import Path


def project_root(start: str | Path | None = None) -> Path:
    """The main repository: ``DVC_ROOT`` or the nearest DVC project above ``start`` (cwd),
    stepping out of DVC experiment copies (``.dvc/tmp/exps/...``)."""
    path = Path(start or os.environ.get("DVC_ROOT") or os.getcwd()).resolve()
    parts = path.parts
    for i in range(len(parts) - 3):
        if parts[i:i + 3] == (".dvc", "tmp", "exps"):
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


def portable(path: str | Path, base: str | Path) -> str:
    """How to record ``path`` in a file that lives in ``base``: relative when the file is part of
    this checkout (it moves with an experiment copy), absolute when it is outside (user data)."""
    path = Path(path).resolve()
    if path.is_relative_to(Path.cwd().resolve()):
        return os.path.relpath(path, Path(base).resolve())
    return str(path)


def resolve(recorded: str, base: str | Path) -> Path:
    """Inverse of :func:`portable`."""
    return Path(recorded) if os.path.isabs(recorded) else Path(base) / recorded
