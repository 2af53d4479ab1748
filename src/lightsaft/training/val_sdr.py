"""``train.select_by: val_sdr``: the validation tracks' SDR, to choose the checkpoints by.

The score is the MDX 2021 SDR (``lightsaft.evaluation.sdr_variants.mdx_sdr``): per track and
target ``10 log10((sum s^2 + eps) / (sum (s - s_hat)^2 + eps))`` over the whole track, averaged
over targets and tracks. Whole-track sums add up over pieces, so it costs no extra forward pass:
the validation loop already separates every validation track, core by core (the official
evaluation windows, :class:`lightsaft.data.datasets.ValidDataset`), and :class:`SdrTally` adds
each core's two energies to its track and target. The result is exactly ``mdx_sdr`` of the
whole track assembled from those cores (tested). Under DDP each rank tallies the windows it
validated and the tallies are summed across ranks before the score is taken (a window the
distributed sampler repeats to even out the ranks counts twice, as it does for the val loss).
"""

from __future__ import annotations

import torch
from pytorch_lightning.callbacks import Callback

from ..spectral import TARGETS

MDX_EPS = 1e-7  # the MDX 2021 kit's delta (evaluation.sdr_variants.MDX_EPS; that layer is not importable here)


class SdrTally:
    """Per validation track and target: the reference's energy, the error's energy, windows seen."""

    def __init__(self, tracks: int, device: torch.device | str = "cpu"):
        self.sums = torch.zeros(tracks, len(TARGETS), 3, dtype=torch.float64, device=device)

    def add(self, target: torch.Tensor, estimate: torch.Tensor, condition: torch.Tensor, where: torch.Tensor) -> None:
        """Waves ``[B, L, 2]``; ``where`` ``[B, 3]``: track index, first and end sample of the core."""
        t = torch.arange(target.shape[1], device=target.device)
        inside = ((t >= where[:, 1:2]) & (t < where[:, 2:3])).unsqueeze(-1)  # [B, L, 1]
        reference, error = target.double() * inside, (target.double() - estimate.double()) * inside
        energies = torch.stack(
            [reference.square().sum((1, 2)), error.square().sum((1, 2)), torch.ones_like(error[:, 0, 0])], dim=1
        )
        index = where[:, 0].long() * len(TARGETS) + condition.long()
        self.sums.view(-1, 3).index_add_(0, index.to(self.sums.device), energies.to(self.sums.device))

    def reduce(self) -> None:
        """Sum the tallies of every DDP rank (a no-op in a single process)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.sums, op=torch.distributed.ReduceOp.SUM)

    def sdr(self) -> float:
        """The mean MDX SDR over the (track, target) pairs that were validated (dB)."""
        seen = self.sums[..., 2] > 0
        scores = 10 * torch.log10((self.sums[..., 0] + MDX_EPS) / (self.sums[..., 1] + MDX_EPS))
        return float(scores[seen].mean())


class ValSdr(Callback):
    """Scores the validation epochs that end an epoch divisible by ``every``, and logs ``val_sdr``
    (a curve, and what the checkpoints are chosen by). The module hands its estimates over while
    ``keep_estimates`` is set; the validation items carry their place (``ValidDataset(where=True)``)."""

    def __init__(self, tracks: int, every: int):
        self.tracks, self.every = tracks, every
        self.tally: SdrTally | None = None

    def _due(self, trainer) -> bool:
        return not trainer.sanity_checking and (trainer.current_epoch + 1) % self.every == 0

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        trainer.callback_metrics.pop("val_sdr", None)  # Lightning keeps old values: no stale score on other epochs
        self.tally = SdrTally(self.tracks, pl_module.device) if self._due(trainer) else None
        pl_module.keep_estimates = self.tally is not None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.tally is not None:
            _, target, condition, where = batch
            self.tally.add(target, outputs["estimate"], condition, where)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self.tally is None:
            return
        self.tally.reduce()
        pl_module.log("val_sdr", self.tally.sdr(), on_epoch=True, prog_bar=True, sync_dist=False)
        self.tally, pl_module.keep_estimates = None, False
