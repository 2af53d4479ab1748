"""The LightSAFT / LaSAFT conditioned U-Net (the network only; weight files: :mod:`lightsaft.weights`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..config import validate_section
from .unet import ConditionedUNet, Separator

__all__ = [
    "ConditionedUNet",
    "Separator",
    "build_model",
    "count_parameters",
    "init_official",
]


def build_model(model_params: dict[str, Any], channels_last: bool | None = None) -> Separator:
    """Build the separator from the ``model`` section (official argument names + ``variant``).

    ``channels_last`` is an execution setting: None (auto), True or False; same results (see
    :class:`Separator`).
    """
    return Separator(validate_section("model", model_params, where="model params"), channels_last=channels_last)


def init_official(model: torch.nn.Module) -> None:
    """The official initialisation: Xavier-normal on every parameter with two or more dimensions
    (embedding and attention keys included); PyTorch's defaults elsewhere."""
    for parameter in model.parameters():
        if parameter.dim() >= 2:
            torch.nn.init.xavier_normal_(parameter)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
