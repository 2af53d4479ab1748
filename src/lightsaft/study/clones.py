"""The clones in which a study's points run on a cluster: one git clone of the user's repository
per job, at the commit the study was submitted from.

DVC holds a lock on its repository while ``dvc exp run`` works (``--temp`` and queued runs
included), so points running at the same time on several machines each need a repository of
their own. A clone uses the user repository's DVC cache (on the cluster's shared file system):
the prepared data and the outputs are stored once, and the points find download and prepare in
DVC's run cache. A finished point goes back to the user's repository (the clone's ``origin``) as
an experiment ref, so ``dvc exp show`` and ``lightsaft ablate --compare-only`` see it as a local one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from ..errors import LightSAFTError


class CloneError(LightSAFTError):
    """The user's repository cannot be cloned, or a clone cannot hand its experiment back."""


def git(repo: str | Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    if result.returncode != 0:
        raise CloneError(f"git {' '.join(args)} in {repo} failed: {(result.stderr or result.stdout).strip()}")
    return result.stdout


def dvc(repo: str | Path, *args: str, env: dict[str, str] | None = None, capture: bool = True) -> str:
    """``dvc ARGS`` in ``repo`` with this interpreter's DVC; its output streams to ours unless captured."""
    env = dict(os.environ if env is None else env)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=capture, text=True)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout or "").strip()[-2000:] if capture else "(its output is above)"
        raise CloneError(f"dvc {' '.join(args[:3])} ... in {repo} failed (exit {result.returncode}): {detail}")
    return result.stdout or ""


def uncommitted(repo: str | Path) -> list[str]:
    """Files that differ from HEAD: changed, staged, deleted, or new and not ignored. A job runs the
    commit, so none of these would take part in it."""
    entries = git(repo, "status", "--porcelain", "-z", "--untracked-files=all").split("\0")
    changed, skip = [], False
    for entry in filter(None, entries):
        if not skip:
            changed.append(entry[3:])
        skip = not skip and entry[0] in "RC"  # a rename or copy: its next entry is the old name
    return changed


def head(repo: str | Path) -> str:
    return git(repo, "rev-parse", "HEAD").strip()


def cache_dir(repo: str | Path) -> Path:
    """The DVC cache the user's repository uses (``dvc cache dir``: its config, or ``.dvc/cache``)."""
    return Path(dvc(repo, "cache", "dir").strip())


def make_clone(repo: str | Path, commit: str, path: str | Path, cache: str | Path) -> Path:
    """A clone of ``repo`` at ``commit`` in ``path`` that uses the DVC cache ``cache``. A clone already
    there at that commit is kept (a requeued job continues in it); any other is replaced."""
    path = Path(path)
    if (path / ".git").is_dir():
        try:
            if head(path) == commit:
                return path
        except CloneError:
            pass
    shutil.rmtree(path, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    git(path.parent, "clone", "--quiet", "--no-checkout", str(Path(repo).resolve()), path.name)
    git(path, "-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", commit)
    dvc(path, "config", "--local", "cache.dir", str(cache))
    return path


def push_experiment(clone: str | Path, name: str) -> None:
    """The clone's finished experiment ``name`` as an experiment ref in its origin (the user's
    repository). Its outputs are in the shared cache already: ``--no-cache``."""
    dvc(clone, "exp", "push", "--no-cache", "origin", name)
