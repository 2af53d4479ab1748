"""Training and validation losses, by name (``train.train_loss`` / ``train.val_loss``).

A loss gets the estimated spectrogram and a :class:`Target` that yields the reference as a
spectrogram or a waveform, whichever the loss needs. Add one by writing a two-line function and
naming it in training/params.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..schema import registry
from ..spectral import SpectralFrontEnd
from .params import LOSSES as NAMES


@dataclass
class Target:
    """The reference, given as a spectrogram ``[B,4,T,F]`` or a waveform ``[B,L,2]`` (or both)."""

    front: SpectralFrontEnd
    spec: torch.Tensor | None = None
    wave: torch.Tensor | None = None

    def as_spec(self) -> torch.Tensor:
        return self.spec if self.spec is not None else self.front.stft(self.wave)

    def as_wave(self) -> torch.Tensor:
        return self.wave if self.wave is not None else self.front.istft(self.spec)


def spec_mse(estimate: torch.Tensor, target: Target) -> torch.Tensor:
    """MSE between complex spectrograms (the official training loss)."""
    return F.mse_loss(estimate.float(), target.as_spec().float())


def spec_l1(estimate: torch.Tensor, target: Target) -> torch.Tensor:
    return F.l1_loss(estimate.float(), target.as_spec().float())


def raw_l1(estimate: torch.Tensor, target: Target) -> torch.Tensor:
    """L1 between waveforms after the inverse STFT (the official validation loss)."""
    reference = target.as_wave()
    return F.l1_loss(target.front.istft(estimate, length=reference.shape[1]), reference.float())


LOSSES: dict[str, Callable[[torch.Tensor, Target], torch.Tensor]] = registry(
    NAMES, spec_mse=spec_mse, spec_l1=spec_l1, raw_l1=raw_l1
)
