"""Optimizers by name (``train.optimizer``); add one here and its name in training/params.py."""

from __future__ import annotations

import torch

from ..schema import registry
from .params import OPTIMIZERS as NAMES

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = registry(NAMES, adam=torch.optim.Adam, adamw=torch.optim.AdamW)
