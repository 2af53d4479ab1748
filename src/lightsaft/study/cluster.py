"""What a study asks of a SLURM cluster: the command's options, and the resources of each point.

Cluster options are options of ``lightsaft ablate``, not params: they change where a point runs,
never its result. The resources of a point follow from its params: one training process per
device, ``trainer.devices`` per node on ``trainer.num_nodes`` nodes; an option that contradicts
them is refused here, before anything is submitted.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

# sbatch options that lightsaft sets itself, and the command option that sets each
OWN_SBATCH = {
    "time": "--time",
    "partition": "--partition",
    "nodes": "trainer.num_nodes",
    "ntasks": "trainer.devices x trainer.num_nodes",
    "ntasks-per-node": "trainer.devices",
    "cpus-per-task": "--cpus-per-point",
    "cpus-per-gpu": "--cpus-per-point",
    "mem": "--mem-per-point",
    "mem-per-cpu": "--mem-per-point",
    "mem-per-gpu": "--mem-per-point",
    "gpus": "--gpus-per-point",
    "gpus-per-node": "--gpus-per-point",
    "gpus-per-task": "--gpus-per-point",
    "array": "--max-running",
    "signal": "(set by lightsaft: the training's signal before the time limit)",
    "requeue": "(set by lightsaft: jobs are requeued)",
    "no-requeue": "(set by lightsaft: jobs are requeued)",
    "dependency": "(set by lightsaft: points wait for their prepare job)",
    "output": "(set by lightsaft: one log per job)",
    "error": "(set by lightsaft: one log per job)",
    "open-mode": "(set by lightsaft: a requeued job appends to its log)",
    "job-name": "(set by lightsaft: the study's name)",
    "chdir": "(set by lightsaft: jobs run in their clone)",
}
SIGNAL_BEFORE_END_S = 300  # the training's notice before the time limit: finish a batch, save a checkpoint


@dataclass(frozen=True)
class ClusterOptions:
    """``lightsaft ablate --executor slurm`` options (see :func:`lightsaft.cli.build_parser`)."""

    time_min: int  # the job time limit; a training that needs longer is requeued and continues
    partition: str | None = None
    cpus: int | None = None  # per point, shared by its training processes
    mem_mb: int | None = None  # per point, shared by its nodes
    gpus: int | None = None  # per point: 0, or one per training process (the default where there are GPUs)
    max_running: int | None = None  # points of one array running at once
    sbatch: tuple[tuple[str, Any], ...] = ()  # extra sbatch options, as (name, value)
    setup: tuple[str, ...] = ()  # shell lines each job runs first (module load, conda activate)
    max_requeues: int | None = None  # None: a training is requeued as often as it needs

    @property
    def signal_delay_s(self) -> int:
        """How long before the time limit SLURM signals the training (half the limit for short ones)."""
        return min(SIGNAL_BEFORE_END_S, self.time_min * 30)


def parse_time(text: str) -> int:
    """An sbatch time limit (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``) in
    whole minutes, rounded up."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not match or text.strip() in ("0", ""):
        raise ConfigError(
            f"--time {text!r}: expected a time limit as sbatch takes it: minutes, HH:MM:SS or D-HH:MM:SS "
            f"(e.g. 24:00:00)"
        )
    days, a, b, c = (int(g) if g is not None else None for g in match.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    elif c is not None:  # HH:MM:SS
        seconds = a * 3600 + b * 60 + c
    elif b is not None:  # MM:SS
        seconds = a * 60 + b
    else:  # MM
        seconds = a * 60
    if seconds <= 0:
        raise ConfigError(f"--time {text!r}: the time limit must be longer than zero")
    return math.ceil(seconds / 60)


def parse_mem(text: str) -> int:
    """Memory as sbatch takes it (a number with K, M, G or T; a plain number is megabytes) in MB."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)B?", text.strip(), re.IGNORECASE)
    if not match or float(match.group(1)) <= 0:
        raise ConfigError(f"--mem-per-point {text!r}: expected memory such as 64G, 500M or 1T")
    factor = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024**2}[match.group(2).upper()]
    return max(1, math.ceil(float(match.group(1)) * factor))


def parse_sbatch(args: list[str]) -> tuple[tuple[str, Any], ...]:
    """Extra sbatch options (``--account=NAME``, ``--qos=high``, ``--exclusive``) as (name, value);
    those that lightsaft sets itself are refused, naming the option to use instead."""
    out = []
    for arg in args:
        match = re.fullmatch(r"--([a-z][a-z0-9-]*)(?:=(.*))?", arg.strip(), re.DOTALL)
        if not match:
            raise ConfigError(
                f"--sbatch {arg!r}: give sbatch options in their long form, one per --sbatch, "
                f"e.g. --sbatch=--account=NAME --sbatch=--qos=NAME"
            )
        name, value = match.group(1), match.group(2)
        if name in OWN_SBATCH:
            raise ConfigError(f"--sbatch {arg!r}: lightsaft sets --{name} itself; use {OWN_SBATCH[name]}")
        out.append((name, True if value is None else value))
    return tuple(out)


@dataclass(frozen=True)
class Resources:
    """One point's job: its nodes, one task per training process, and what each gets."""

    nodes: int
    tasks_per_node: int
    gpus_per_node: int
    cpus_per_task: int | None
    mem_mb_per_node: int | None

    @property
    def processes(self) -> int:
        return self.nodes * self.tasks_per_node


def resources(name: str, trainer: dict[str, Any], options: ClusterOptions) -> Resources:
    """The resources of point ``name`` from its ``trainer`` params and the options; a contradiction
    between the two is an error that names both."""
    devices, nodes, accelerator = trainer["devices"], trainer["num_nodes"], trainer["accelerator"]
    if not isinstance(devices, int) or isinstance(devices, bool) or devices < 1:
        raise ConfigError(
            f"point {name}: trainer.devices = {devices!r}: on a cluster SLURM assigns the devices; give their "
            f"number per node (1, 2, ...)"
        )
    if accelerator == "mps":
        raise ConfigError(f"point {name}: trainer.accelerator = 'mps' (Apple GPUs) cannot run on a SLURM cluster")
    processes = devices * nodes
    layout = f"trainer.devices {devices} x trainer.num_nodes {nodes} = {processes} training process(es)"
    gpus = options.gpus
    if gpus is None:
        gpus = 0 if accelerator == "cpu" else processes
    if accelerator == "cpu" and gpus:
        raise ConfigError(
            f"point {name}: --gpus-per-point {gpus} contradicts trainer.accelerator = 'cpu'; drop the option "
            f"or set trainer.accelerator"
        )
    if gpus not in (0, processes) or (gpus == 0 and accelerator in ("gpu", "cuda")):
        raise ConfigError(
            f"point {name}: --gpus-per-point {gpus} contradicts {layout} on {accelerator!r} devices, one GPU each: "
            f"give --gpus-per-point {processes} (or 0 with trainer.accelerator cpu or auto), or change trainer.devices"
        )
    cpus = options.cpus
    if cpus is not None and cpus % processes:
        raise ConfigError(
            f"point {name}: --cpus-per-point {cpus} does not split evenly over {layout}: give a multiple of {processes}"
        )
    mem = options.mem_mb
    return Resources(
        nodes=nodes,
        tasks_per_node=devices,
        gpus_per_node=gpus // nodes,
        cpus_per_task=None if cpus is None else cpus // processes,
        mem_mb_per_node=None if mem is None else max(1, mem // nodes),
    )
