"""What a study's cluster jobs run (submitit pickles these callables and runs them on a node).

Each job runs in the batch step of its allocation: it makes its clone, runs DVC there and reports
to the user's repository. A point's training runs in a job step of its own (``srun``, started by
the train stage: :mod:`lightsaft.training.job_step`), so SLURM's signal before the time limit
(``sbatch --signal``, which reaches job steps and not the batch step) stops the training alone;
DVC, git and submitit's wrapper are not signalled. The training saves where it stands and leaves a
note; the job then hands the signal to submitit, whose handler requeues the job
(:class:`submitit.helpers.Checkpointable`), and the requeued job runs the same DVC experiment again
with ``runtime.train.resume=true``: DVC skips the stages that finished, the training continues
from its checkpoint in the same MLflow run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
import yaml

from ..errors import LightSAFTError
from ..paths import write_text_atomic
from ..training import job_step
from .clones import make_clone, push_experiment
from .experiments import set_args


class JobFailed(LightSAFTError):
    """A cluster job could not do its work; its log says why."""


def job_id() -> str:
    return submitit.JobEnvironment().job_id


def restarts() -> int:
    """How often SLURM has started this job again (requeued for the time limit, or preempted)."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0)


def write_result(path: str | Path, status: str, message: str = "") -> None:
    """What the job reports to the submitting side (``lightsaft ablate --status``)."""
    record = {"job": job_id(), "status": status, "message": message, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_text_atomic(path, json.dumps(record, indent=2) + "\n")


@contextmanager
def reporting(result: str, clone: str) -> Iterator[None]:
    """A job's body: its outcome written where ``--status`` reads it (an error's text too), and the
    clone of a finished job removed (a failed one stays, to be looked at)."""
    Path(result).unlink(missing_ok=True)
    try:
        yield
    except Exception as e:
        write_result(result, "failed", str(e))
        raise
    write_result(result, "done")
    shutil.rmtree(clone, ignore_errors=True)


def stage_env() -> dict[str, str]:
    """The environment of DVC in a clone. User paths (``data.root``, ``.lightsaft/``, downloads)
    resolve against the user's repository, which holds the clone (:func:`lightsaft.paths.project_root`)."""
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        raise JobFailed(
            "MLFLOW_TRACKING_URI is not set in the job's environment (sbatch passes the submitting shell's "
            "environment on, unless --export says otherwise): the runs need the tracking server"
        )
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def set_params(params_file: Path, overrides: dict[str, Any]) -> None:
    """Write ``overrides`` (dotted keys) into a params file, as ``dvc exp run -S`` would."""
    params = yaml.safe_load(params_file.read_text()) or {}
    for key, value in overrides.items():
        node = params
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    write_text_atomic(params_file, yaml.safe_dump(params, sort_keys=False))


@dataclass
class PrepareJob:
    """Download and prepare once for every point that shares their params: ``dvc repro prepare`` in
    a clone, which stores the outputs in the shared cache and the stages in DVC's run cache, where
    the points' ``dvc exp run`` finds them."""

    repo: str
    commit: str
    cache: str
    overrides: dict[str, Any]  # a point's: the prepare stage reads only its part of them
    clone: str
    result: str

    def __call__(self) -> str:
        with reporting(self.result, self.clone):
            env = stage_env()
            clone = make_clone(self.repo, self.commit, self.clone, self.cache)
            set_params(clone / "params.yaml", self.overrides)
            code = subprocess.call([sys.executable, "-m", "dvc", "repro", "prepare"], cwd=clone, env=env)
            if code != 0:
                raise JobFailed(f"dvc repro prepare failed (exit {code}); its output is above")
        return "done"


@dataclass
class PointJob(submitit.helpers.Checkpointable):
    """One point: ``dvc exp run`` in its clone, then the experiment pushed to the user's repository."""

    repo: str
    commit: str
    cache: str
    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    clone: str = ""
    result: str = ""
    note: str = ""  # written by the training when the time-limit signal stopped it

    def __call__(self) -> str:
        Path(self.note).unlink(missing_ok=True)
        restart = restarts()
        with reporting(self.result, self.clone):
            env = stage_env() | job_step.environment(submitit.JobEnvironment.USR_SIG, self.note)
            if not restart:  # a new submission starts from a clean clone; a requeued job goes on in its own
                shutil.rmtree(self.clone, ignore_errors=True)
            clone = make_clone(self.repo, self.commit, self.clone, self.cache)
            overrides = {**self.overrides, **({"runtime.train.resume": True} if restart else {})}
            if restart:
                print(f"restart {restart} of this job: the training continues from its checkpoint", flush=True)
            args = ["exp", "run", "-n", self.name, *set_args(overrides)]
            print(f"$ dvc {' '.join(args)}", flush=True)
            code = subprocess.call([sys.executable, "-m", "dvc", *args], cwd=clone, env=env)
            if code != 0 and Path(self.note).exists():
                self._requeue()
            if code != 0:
                how = f"was stopped by signal {-code}" if code < 0 else f"failed (exit {code})"
                raise JobFailed(f"dvc exp run {how}; its output is above")
            push_experiment(clone, self.name)
        return "done"

    def _requeue(self) -> None:
        """The training stopped for the time limit and saved its state: submitit's handler of the
        time-limit signal (which SLURM gave the training's step, not this one) requeues the job,
        through :meth:`checkpoint`, and ends this process; or, past ``--max-requeues``, raises."""
        Path(self.note).unlink(missing_ok=True)
        print("the training stopped before the time limit and saved its state; requeueing the job", flush=True)
        signal.raise_signal(getattr(signal, f"SIG{submitit.JobEnvironment.USR_SIG}"))
        raise JobFailed("submitit did not requeue the job")  # reached only if its handler returned
