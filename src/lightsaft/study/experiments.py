"""DVC experiments as the studies use them: run ``dvc`` commands, list the finished experiments
and read the small files (metrics, params, run records) each one committed (those two live in
:mod:`lightsaft.dvc_experiments`, which resolving a model by experiment name shares).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..dvc_experiments import experiment_refs, read_from_experiment
from ..errors import LightSAFTError

__all__ = ["ExperimentError", "dvc", "experiment_refs", "read_from_experiment", "set_args"]


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
