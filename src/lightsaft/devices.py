"""Which torch device a stage runs on, and sharing the GPUs of one machine between processes.

Queued experiments (``lightsaft ablate --jobs N``) run side by side; on a machine with several GPUs
each training or separation takes a GPU no one else holds (one lock file per GPU), instead of all
of them landing on ``cuda:0``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError, LightSAFTError
from .paths import file_lock, project_root

POLL_S = 10.0


class DeviceError(LightSAFTError, ValueError):
    """A device that is not a torch device, or not on this machine."""


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` = CUDA when available, else CPU; anything else must exist here."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise DeviceError(f"device {device!r}: not a torch device; use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r}: CUDA is not available on this machine; use auto or cpu")
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise DeviceError(
            f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
            f"cuda:0 to cuda:{torch.cuda.device_count() - 1}"
        )
    return resolved


def check_sync_batchnorm(accelerator: str, sync_batchnorm: bool) -> None:
    """PyTorch's SyncBatchNorm runs on CUDA GPUs only (a DDP run on CPUs fails at its first batch):
    refuse it before a training creates anything. ``cpu``/``mps`` are refused by the params
    validation already; this catches ``auto`` (or ``gpu``) on a machine without a CUDA GPU."""
    if sync_batchnorm and not (accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()):
        raise ConfigError(
            f"trainer.sync_batchnorm = true, but trainer.accelerator = {accelerator!r} finds no CUDA GPU on this "
            f"machine, and PyTorch's SyncBatchNorm runs on GPUs only; set trainer.sync_batchnorm: false to train here"
        )


def visible_gpus() -> list[str]:
    """Names of the GPUs this process may use (as ``CUDA_VISIBLE_DEVICES`` names them), by index."""
    if not torch.cuda.is_available():
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [n.strip() for n in env.split(",")] if env else []
    count = torch.cuda.device_count()
    return names[:count] if len(names) >= count else [str(i) for i in range(count)]


def lock_dir() -> Path:
    """Where the per-GPU locks live: shared by every experiment copy of the main repository."""
    return project_root() / ".lightsaft" / "locks"


@contextmanager
def claim_free_gpu(gpus: list[str], locks: Path | None = None, poll_s: float = POLL_S) -> Iterator[int]:
    """Hold a GPU that no other process of this project holds; yields its index (waits when all
    are taken). The lock is named after the GPU's name, so processes with different
    ``CUDA_VISIBLE_DEVICES`` orders still agree on who holds which."""
    with ExitStack() as held:
        yield _acquire(held, gpus, locks or lock_dir(), poll_s)


def _acquire(held: ExitStack, gpus: list[str], locks: Path, poll_s: float) -> int:
    waited = False
    while True:
        for index, name in enumerate(gpus):
            try:
                held.enter_context(file_lock(locks / f"gpu-{name}.lock", wait=False))
            except BlockingIOError:
                continue
            print(f"using GPU {name}")
            return index
        if not waited:
            print(f"all {len(gpus)} GPUs are taken by other runs; waiting for one")
            waited = True
        time.sleep(poll_s)


@contextmanager
def claim_devices(devices: Any, gpus: list[str], locks: Path | None = None, poll_s: float = POLL_S) -> Iterator[Any]:
    """Lightning's ``devices`` for a training: one device on a machine with several GPUs becomes
    a free GPU (held while training); anything else (DDP over several, CPU) is used as given."""
    if devices != 1 or len(gpus) < 2:
        yield devices
        return
    with claim_free_gpu(gpus, locks, poll_s) as index:
        yield [index]


@contextmanager
def inference_device(device: str) -> Iterator[torch.device]:
    """The device of an inference stage: as given, except ``auto`` on a machine with several GPUs,
    which holds a free GPU for as long as the stage runs."""
    gpus = visible_gpus() if device == "auto" else []
    if len(gpus) < 2:
        yield resolve_device(device)
        return
    with claim_free_gpu(gpus) as index:
        yield torch.device(f"cuda:{index}")
