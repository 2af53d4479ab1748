"""Which torch device a stage runs on (separation, the fast scoring engine)."""

from __future__ import annotations

import torch

from .errors import LightSAFTError


class DeviceError(LightSAFTError, ValueError):
    """A device that is not a torch device, or not on this machine."""


def resolve_device(device: str) -> torch.device:
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
