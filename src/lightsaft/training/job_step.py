"""The training as a SLURM job step, when a study runs on a cluster (``lightsaft ablate --executor slurm``).

The cluster job runs DVC in its batch step; the train stage there only starts the training as a
job step, ``srun`` with one task per training process (``trainer.devices`` per node on
``trainer.num_nodes`` nodes; each task knows its global rank from ``SLURM_PROCID``), waits for it
and exits as it did. SLURM's signal before the time limit (``sbatch --signal``) goes to the job's
steps, so it reaches the training's processes and nothing else of the job. The training takes it
as a SIGTERM, whose handling stops every rank at the same batch and saves the interrupted state
(Lightning's handler alone, :class:`~lightsaft.training.callbacks.StopTogether` under DDP), and
leaves a note for the job, which then has the job requeued (:mod:`lightsaft.study.jobs`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

LAUNCH = "LIGHTSAFT_TRAIN_AS_JOB_STEP"  # set by the job: start the training with srun
STOP_SIGNAL = "LIGHTSAFT_STOP_SIGNAL"  # the signal SLURM sends before the time limit (USR2)
STOPPED_NOTE = "LIGHTSAFT_STOPPED_NOTE"  # the file the training writes when that signal stopped it


def environment(stop_signal: str, note: str | Path) -> dict[str, str]:
    """What a cluster job puts in DVC's environment for the train stage."""
    return {LAUNCH: "1", STOP_SIGNAL: stop_signal, STOPPED_NOTE: str(note)}


def wanted() -> bool:
    """Whether this process is to start the training as a job step rather than train itself."""
    return os.environ.get(LAUNCH) == "1"


def command(trainer: dict[str, Any], argv: list[str]) -> list[str]:
    """``srun`` starting this stage (``argv``) once per training process."""
    devices, nodes = trainer["devices"], trainer["num_nodes"]
    cmd = ["srun", f"--nodes={nodes}", f"--ntasks={devices * nodes}", f"--ntasks-per-node={devices}"]
    cmd += ["--kill-on-bad-exit=1", "--unbuffered"]  # a rank that fails stops the others
    if cpus := os.environ.get("SLURM_CPUS_PER_TASK"):  # srun (22.05+) does not take it from the job
        cmd.append(f"--cpus-per-task={cpus}")
    return [*cmd, sys.executable, *argv]


def launch(trainer: dict[str, Any]) -> int:
    """Run the training as a job step and return its exit code."""
    env = {k: v for k, v in os.environ.items() if k != LAUNCH}
    cmd = command(trainer, sys.argv)
    print(f"train: {' '.join(cmd[: cmd.index(sys.executable)])}: {trainer['devices'] * trainer['num_nodes']} "
          f"training process(es) as a job step", flush=True)  # fmt: skip
    return subprocess.call(cmd, env=env)


def take_stop_signal() -> None:
    """In the job step: the time-limit signal becomes a SIGTERM, after a note for the job."""
    name, note = os.environ.get(STOP_SIGNAL), os.environ.get(STOPPED_NOTE)
    if not name or not note:
        return

    def stop(signum, frame) -> None:
        Path(note).touch()
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(getattr(signal, f"SIG{name}"), stop)
