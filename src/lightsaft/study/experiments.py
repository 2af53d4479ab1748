"""DVC experiments as the studies use them: run ``dvc`` commands, list the finished experiments
and read the small files (metrics, params, run records) each one committed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from ..errors import LightSAFTError


class ExperimentError(LightSAFTError):
    """A DVC experiment command failed."""


def dvc(repo: Path, *args: str, check: bool = True, capture: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=capture, text=True)
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout or "").strip()[-2000:] if capture else ""
        raise ExperimentError(f"dvc {' '.join(args[:3])} ... failed (exit {result.returncode}). {detail}")
    return result


def set_args(overrides: dict[str, Any]) -> list[str]:
    args = []
    for key, value in overrides.items():
        args += ["-S", f"{key}={json.dumps(value)}"]  # JSON is YAML: "32" stays a string
    return args


def experiment_refs(repo: Path) -> dict[str, str]:
    """Experiment name -> git ref, for every finished DVC experiment in the repo."""
    out = subprocess.run(
        ["git", "for-each-ref", "--format=%(refname)", "refs/exps/"], cwd=repo, capture_output=True, text=True
    ).stdout.split()
    return {ref.rsplit("/", 1)[-1]: ref for ref in out if ref.count("/") >= 4}


def read_from_experiment(repo: Path, ref: str, path: str) -> Any:
    """A git-tracked file (metrics, params, run record) as committed in an experiment."""
    result = subprocess.run(["git", "show", f"{ref}:{path}"], cwd=repo, capture_output=True, text=True)
    if result.returncode != 0:
        return None
    return json.loads(result.stdout) if path.endswith(".json") else yaml.safe_load(result.stdout)
