"""DVC experiments as git keeps them: which exist, the small files each committed, and where an
output of one (``models/weights.pt``) lies in the DVC cache.

An experiment is a commit under ``refs/exps/<baseline[:2]>/<baseline[2:]>/<name>``: its git-tracked
files (metrics, params, run records, ``dvc.lock``) are read from that commit, its DVC outputs from
the cache by the md5 its ``dvc.lock`` records. Low in the package, so that the studies and the one
path from a model reference to a model (:mod:`lightsaft.weights.resolve`) share it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from .errors import LightSAFTError

PREFIX = "refs/exps/"


class ExperimentOutputError(LightSAFTError):
    """An experiment's output is not recorded in its dvc.lock, or not (intact) in the DVC cache."""


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)


def experiment_refs_by_name(repo: Path) -> dict[str, list[str]]:
    """Experiment name -> its git refs (one per baseline commit it was run from: DVC allows one name
    on several baselines), for every finished DVC experiment in the repo; none outside a git repo."""
    out = _git(repo, "for-each-ref", "--format=%(refname)", PREFIX).stdout.split()
    found: dict[str, list[str]] = {}
    for ref in out:
        if ref.count("/") >= 4:  # refs/exps/ab/cdef.../name (refs/exps/exec/... are DVC's own)
            found.setdefault(ref.rsplit("/", 1)[-1], []).append(ref)
    return found


def experiment_refs(repo: Path) -> dict[str, str]:
    """Experiment name -> git ref, for every finished DVC experiment in the repo."""
    return {name: refs[-1] for name, refs in experiment_refs_by_name(repo).items()}


def read_from_experiment(repo: Path, ref: str, path: str) -> Any:
    """A git-tracked file (metrics, params, run record), as committed in an experiment; None if absent.
    ``path`` is relative to ``repo`` (also where the DVC project is a folder of the git repository)."""
    result = _git(repo, "show", f"{ref}:./{path}")
    if result.returncode != 0:
        return None
    return json.loads(result.stdout) if path.endswith(".json") else yaml.safe_load(result.stdout)


def cached_output(repo: Path, ref: str, path: str) -> tuple[Path, str]:
    """The DVC cache file holding output ``path`` (a file) as experiment ``ref`` made it, and its md5
    from the experiment's ``dvc.lock``; the file's md5 is checked against it."""
    name = ref.rsplit("/", 1)[-1]
    lock = read_from_experiment(repo, ref, "dvc.lock") or {}
    outs = [o for stage in (lock.get("stages") or {}).values() for o in stage.get("outs", [])]
    entry = next((o for o in outs if o.get("path") == path), None)
    if entry is None or "md5" not in entry:
        raise ExperimentOutputError(
            f"DVC experiment {name}: its dvc.lock records no {path} (did its pipeline finish? dvc exp show)"
        )
    md5 = entry["md5"]
    cached = _cache_path(repo, md5, legacy=entry.get("hash") != "md5")
    if not cached.is_file():
        raise ExperimentOutputError(
            f"DVC experiment {name}: {path} (md5 {md5}) is not in the DVC cache ({cached.parent.parent}); "
            f"fetch it with `dvc exp pull <remote> {name}`, or rerun the experiment"
        )
    digest = hashlib.md5()
    with open(cached, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != md5:
        raise ExperimentOutputError(
            f"DVC experiment {name}: the DVC cache file {cached} of {path} is corrupt (md5 {digest.hexdigest()}, "
            f"dvc.lock says {md5}); remove it and fetch it again (`dvc exp pull <remote> {name}`)"
        )
    return cached, md5


def _cache_path(repo: Path, md5: str, legacy: bool) -> Path:
    """Where DVC keeps content ``md5`` (as its config says: ``cache.dir`` may move the cache)."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        odb = dvc_repo.cache.legacy if legacy else dvc_repo.cache.local  # DVC 2 entries lack "hash: md5"
        return Path(odb.oid_to_path(md5))
