"""Which process of a distributed training this one is, known before the Trainer exists.

Lightning assigns ranks when the Trainer is built, but the train stage needs its rank earlier:
only global rank zero may take the training's lock, open the MLflow run and write the outputs,
and every rank seeds its own item draws. The launchers say it in the environment:

- torchrun: ``RANK``;
- SLURM (``srun``, one task per device): ``SLURM_PROCID``;
- Lightning's own launcher: ``NODE_RANK`` (set by the user on each machine) and ``LOCAL_RANK``
  (set by Lightning in the processes it starts; absent in the first process of a node, which
  is local rank 0): global rank = ``NODE_RANK * devices per node + LOCAL_RANK``.

``LOCAL_RANK`` alone is not enough: the first process on node 1 has only ``NODE_RANK=1`` and
would take itself for rank zero. The train stage checks the result against the Trainer's own
rank once that exists. The launchers are told apart as Lightning does (torchrun first, then
SLURM, else Lightning's own), so both agree.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from lightning_fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment


def devices_per_node(accelerator: str, devices: Any) -> int:
    """How many processes Lightning starts per machine for ``trainer.devices``."""
    if isinstance(devices, list):
        return len(devices)
    if isinstance(devices, int) and devices > 0:
        return devices
    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return torch.cuda.device_count() if gpu else 1  # auto / -1: every GPU; a CPU is one device


def global_rank(devices_per_node: int) -> int:
    """This process's global rank, from what its launcher put in the environment (0 when alone)."""
    env = os.environ
    if TorchElasticEnvironment.detect():
        return int(env["RANK"])
    if SLURMEnvironment.detect():
        return int(env["SLURM_PROCID"])
    node = int(env.get("NODE_RANK", env.get("GROUP_RANK", 0)))
    return node * devices_per_node + int(env.get("LOCAL_RANK", 0))
