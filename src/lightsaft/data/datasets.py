"""Training and validation data from the spectrogram cache, the way the official recipe samples.

Training mixes in the STFT domain: the STFT is linear, so the sum of four cached stem
windows (hop-aligned frame offsets) is the spectrogram of their time-domain sum, and no item
ever runs an STFT. Randomness comes from torch's global generator, which
``pytorch_lightning.seed_everything(seed, workers=True)`` seeds in the main process and
DataLoader seeds differently in each worker: reproducible, and different across workers.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from .cache import Cache
from ..spectral import TARGETS, window_samples
from ..errors import DataError

SWAP_CHANNELS = [1, 0, 3, 2]  # Re L, Re R, Im L, Im R -> Re R, Re L, Im R, Im L


class Draw(NamedTuple):
    """The random choices behind one training item; stem k is ``TARGETS[k]``."""

    condition: int
    tracks: list[str]
    offsets: list[int]  # first frame of each stem's window
    gains: list[float]
    swaps: list[bool]


class TrainDataset(Dataset):
    """Random ``(mixture_spec, target_spec, condition)`` items, each ``[4, num_frame, F]`` float32.

    Each stem comes from an independently chosen track and offset (``mix_across_tracks``; else
    one track and offset for all four), optionally with a random gain (0.25-1.25) and L/R swap
    per stem; the mixture is the sum of the four, the target the stem of ``condition``.
    """

    def __init__(
        self,
        cache: Cache,
        num_frame: int,
        items_per_epoch: int | None = None,
        mix_across_tracks: bool = True,
        augment_gain: bool = False,
        augment_channel_swap: bool = False,
    ):
        self.cache, self.num_frame = cache, num_frame
        self.names = cache.tracks("train")
        if not self.names:
            raise DataError(f"{cache.path}: no train tracks; rerun the download and prepare stages")
        self.frames = [cache.frames(name) for name in self.names]
        self.length = items_per_epoch or 4 * sum(f // num_frame for f in self.frames)
        if self.length == 0:
            raise DataError(
                f"{cache.path}: every train track is shorter than num_frame = {num_frame} "
                f"frames; set train.items_per_epoch"
            )
        self.mix_across_tracks, self.augment_gain, self.augment_channel_swap = (
            mix_across_tracks,
            augment_gain,
            augment_channel_swap,
        )
        self._stored: np.ndarray | None = None  # scratch buffers of assemble()
        self._widened: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.length

    def draw(self) -> Draw:
        """Pick target, tracks, offsets and augmentations from torch's global generator."""
        n = len(TARGETS)
        picks = torch.randint(len(self.names), (n if self.mix_across_tracks else 1,)).tolist()
        offsets = [int(torch.randint(max(1, self.frames[t] - self.num_frame + 1), ())) for t in picks]
        if not self.mix_across_tracks:
            picks, offsets = picks * n, offsets * n
        return Draw(
            condition=int(torch.randint(n, ())),
            tracks=[self.names[t] for t in picks],
            offsets=offsets,
            gains=(0.25 + torch.rand(n)).tolist() if self.augment_gain else [1.0] * n,
            swaps=(torch.rand(n) < 0.5).tolist() if self.augment_channel_swap else [False] * n,
        )

    def assemble(self, draw: Draw) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Read the four windows of ``draw`` and mix them in float32.

        Only the two returned tensors are new: every fresh multi-megabyte buffer costs page
        faults, so windows go through two scratch buffers kept per process (DataLoader calls
        ``__getitem__`` from one thread per process). This makes an item several times faster.
        """
        first = self.cache.spec(draw.tracks[0])
        n, bins = self.num_frame, first.shape[-1]
        if self._stored is None:
            self._stored = np.empty((4, n, bins), dtype=first.dtype)
            self._widened = torch.empty(4, n, bins)
        mixture, target = torch.empty(4, n, bins), torch.empty(4, n, bins)
        choices = zip(draw.tracks, draw.offsets, draw.gains, draw.swaps)
        for k, (track, offset, gain, swap) in enumerate(choices):
            spec = self.cache.spec(track)
            frames = min(n, spec.shape[2] - offset)  # a track shorter than the window is zero-padded
            for channel, source in enumerate(SWAP_CHANNELS if swap else range(4)):
                self._stored[channel, :frames] = spec[k, source, offset : offset + frames]
            self._stored[:, frames:] = 0
            stem = mixture if k == 0 else self._widened
            stem.copy_(torch.from_numpy(self._stored))
            if gain != 1.0:
                stem.mul_(gain)
            if k > 0:
                mixture.add_(stem)
            if k == draw.condition:
                target.copy_(stem)
        return mixture, target, torch.tensor(draw.condition)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.assemble(self.draw())


class ValidDataset(Dataset):
    """Fixed ``(mixture_wave, target_wave, condition)`` items, each wave ``[L, 2]`` float32.

    Windows of ``L = hop * (num_frame - 1)`` samples (exactly ``num_frame`` STFT frames) tile each
    validation track without overlap; a shorter track gives one zero-padded window.
    ``chunks_per_track`` keeps that many windows per track, evenly spread. Items are ordered by
    track, then window, then condition 0..3.
    """

    def __init__(self, cache: Cache, num_frame: int, chunks_per_track: int | None = None):
        self.cache = cache
        self.window = window_samples(num_frame, cache.manifest["hop_length"])
        self.chunks: list[tuple[str, int]] = []
        for name in cache.tracks("valid"):
            count = max(1, cache.samples(name) // self.window)
            keep = range(count)
            if chunks_per_track is not None and chunks_per_track < count:
                keep = np.linspace(0, count - 1, chunks_per_track).round().astype(int).tolist()
            self.chunks += [(name, i * self.window) for i in keep]
        if not self.chunks:
            raise DataError(f"{cache.path}: no validation tracks; rerun the download and prepare stages")

    def __len__(self) -> int:
        return len(self.chunks) * len(TARGETS)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        (name, start), condition = self.chunks[index // len(TARGETS)], index % len(TARGETS)
        target = TARGETS[condition]
        audio = self.cache.load_audio(name, start, start + self.window, stems=("mixture", target))
        waves = []
        for stem in ("mixture", target):
            wave = np.zeros((self.window, 2), dtype=np.float32)
            wave[: len(audio[stem])] = audio[stem]
            waves.append(torch.from_numpy(wave))
        return waves[0], waves[1], torch.tensor(condition)
