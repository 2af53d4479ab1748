"""Training and validation data from the spectrogram cache, the way the official recipe samples.

Training mixes in the STFT domain: the STFT is linear, so the sum of four cached stem
windows (hop-aligned frame offsets) is the spectrogram of their time-domain sum, and no item
ever runs an STFT. Randomness comes from torch's global generator, which :func:`seed_draws`
seeds in the main process and DataLoader seeds differently in each worker: reproducible, and
different across workers; under DDP, different across ranks or (``same``) alike on every rank.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import platform
import warnings
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import numpy as np
import torch
from lightning_fabric.utilities.seed import pl_worker_init_function, seed_everything
from torch.utils.data import DataLoader, Dataset, default_collate, get_worker_info

from ..errors import DataError
from ..spectral import TARGETS, window_samples
from .cache import Cache

SWAP_CHANNELS = [1, 0, 3, 2]  # Re L, Re R, Im L, Im R -> Re R, Re L, Im R, Im L


def epoch_length(samples: list[int], window: int) -> int:
    """The official epoch (``MusdbTrainSet.__len__``): one item per target for every whole
    window of ``window`` samples that fits in a train track."""
    return len(TARGETS) * sum(s // window for s in samples)


def seed_draws(seed: int, rank: int, rank_sampling: str) -> Callable[[int], None] | None:
    """Seed the item draws of DDP rank ``rank`` (``train.rank_sampling``); returns the DataLoader's
    ``worker_init_fn``.

    ``distinct``: the main process takes ``seed + rank``, and Lightning seeds the workers (it mixes
    the global rank in): every rank draws its own items. ``same``: every rank takes ``seed`` and
    seeds its workers as rank zero's, so every rank draws the items rank zero draws, whatever
    ``num_workers``: the official DDP, where each rank called ``seed_everything(seed)`` and
    ``MusdbTrainSet`` ignored the index its sampler gave it. A single process is rank zero either way.
    """
    same = rank_sampling == "same"
    seed_everything(seed if same else seed + rank, workers=True, verbose=False)
    return partial(pl_worker_init_function, rank=0) if same else None  # Lightning keeps one that is set


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
    per stem; the mixture is the sum of the four, the target the stem of ``condition``. An
    epoch is :func:`epoch_length` items unless ``items_per_epoch`` is given.

    Batches are fastest through :func:`train_batches`: ``__getitems__`` assembles a whole batch
    in place, and :func:`collate` hands it on without the copy a per-item DataLoader makes.
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
        window = window_samples(num_frame, cache.manifest["hop_length"])
        self.length = items_per_epoch or epoch_length([cache.samples(name) for name in self.names], window)
        if self.length == 0:
            raise DataError(
                f"{cache.path}: every train track is shorter than num_frame = {num_frame} "
                f"frames ({window} samples); set train.items_per_epoch"
            )
        self.mix_across_tracks, self.augment_gain, self.augment_channel_swap = (
            mix_across_tracks,
            augment_gain,
            augment_channel_swap,
        )
        self._specs: dict[str, torch.Tensor] = {}  # per process: float16 views of the memory maps
        self._scratch: torch.Tensor | None = None  # per process: one float32 stem window

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_specs": {}, "_scratch": None}

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

    def _spec(self, track: str) -> torch.Tensor:
        if track not in self._specs:
            with warnings.catch_warnings():  # read-only memory map: torch warns that it cannot write
                warnings.simplefilter("ignore", UserWarning)
                self._specs[track] = torch.from_numpy(self.cache.spec(track))
        return self._specs[track]

    def _bins(self) -> int:
        return self._spec(self.names[0]).shape[-1]

    def assemble_into(self, draw: Draw, mixture: torch.Tensor, target: torch.Tensor) -> None:
        """Write the item of ``draw`` into ``mixture`` and ``target`` (``[4, num_frame, F]`` float32).

        float16 is widened on the fly (torch converts with SIMD, numpy does not), and a stem
        with gain 1 that is not the target is widened and added in one pass: only the output is
        written, plus one scratch window kept per process (fresh multi-megabyte buffers cost
        page faults). The mixture is summed in stem order, so a draw always gives the same bits.
        """
        n = self.num_frame
        if self._scratch is None:
            self._scratch = torch.empty(4, n, mixture.shape[-1])
        choices = zip(draw.tracks, draw.offsets, draw.gains, draw.swaps)
        for k, (track, offset, gain, swap) in enumerate(choices):
            spec = self._spec(track)
            frames = min(n, spec.shape[2] - offset)  # a track shorter than the window is zero-padded
            window = spec[k, :, offset : offset + frames]
            channels = list(enumerate(SWAP_CHANNELS if swap else range(4)))
            if k > 0 and gain == 1.0 and k != draw.condition:
                for channel, source in channels:
                    mixture[channel, :frames].add_(window[source])
                continue
            stem = target if k == draw.condition else mixture if k == 0 else self._scratch
            for channel, source in channels:
                stem[channel, :frames].copy_(window[source])
            stem[:, frames:] = 0
            if gain != 1.0:
                stem.mul_(gain)
            if k == 0 and stem is not mixture:
                mixture.copy_(stem)
            elif k > 0:
                mixture.add_(stem)

    def assemble(self, draw: Draw) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The item of ``draw``, in new tensors."""
        mixture, target = (torch.empty(4, self.num_frame, self._bins()) for _ in range(2))
        self.assemble_into(draw, mixture, target)
        return mixture, target, torch.tensor(draw.condition)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.assemble(self.draw())

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """A batch of items (drawn in order, as ``__getitem__`` would), written in place into two
        batch tensors; each item is a view of them, which :func:`collate` hands on as they are.
        In a DataLoader worker the batch tensors are in shared memory, as ``default_collate``
        makes them, so that sending them to the main process copies nothing."""
        draws = [self.draw() for _ in indices]
        shape = (len(draws), 4, self.num_frame, self._bins())
        mixture, target = _empty(shape), _empty(shape)
        conditions = torch.tensor([d.condition for d in draws])
        for i, d in enumerate(draws):
            self.assemble_into(d, mixture[i], target[i])
        return [(mixture[i], target[i], conditions[i]) for i in range(len(draws))]


def _empty(shape: tuple[int, ...]) -> torch.Tensor:
    """A float32 tensor; in a DataLoader worker, in shared memory."""
    if get_worker_info() is None:
        return torch.empty(shape)
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * 4)
    return torch.empty(0).set_(storage, 0, shape)


def collate(items: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """``default_collate``, except for items that are consecutive rows of batch tensors
    (:meth:`TrainDataset.__getitems__`): those tensors are returned without a copy."""
    fields = list(zip(*items))
    bases = [field[0]._base for field in fields]
    whole = all(
        base is not None
        and len(base) == len(items)
        and all(t._base is base and t.storage_offset() == i * base.stride(0) for i, t in enumerate(field))
        for base, field in zip(bases, fields)
    )
    return tuple(bases) if whole else default_collate(items)


def keep_freed_memory() -> None:
    """Let this process reuse freed batch memory instead of faulting in fresh pages.

    glibc serves each block over 32 MB (a seed-config batch tensor is 34 MB) with its own mmap
    and unmaps it when it is freed, so every new batch costs a page fault per 4 KB page: about
    20 ms per tensor here, more than assembling the batch. Serving every block from the heap,
    and trimming the heap only when over 1 GB of it is free, lets a batch reuse the pages of the
    one before (as jemalloc and tcmalloc do). A no-op off glibc.
    """
    if platform.libc_ver()[0] != "glibc":
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's malloc.h
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, 1 << 30)


def train_batches(dataset: TrainDataset, batch_size: int, **kwargs: Any) -> DataLoader:
    """The training DataLoader: whole batches assembled in place (:meth:`TrainDataset.__getitems__`),
    in order (items are random anyway), full batches only (train-mode BatchNorm1d in the control
    model cannot take a batch of one). Calls :func:`keep_freed_memory` for this process."""
    keep_freed_memory()
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=True, collate_fn=collate, **kwargs)


class ValidDataset(Dataset):
    """Fixed ``(mixture_wave, target_wave, condition)`` items, each wave ``[L, 2]`` float32, as the
    official evaluation set with ground truth (``MusdbEvalSetWithGT``).

    A window holds ``L = hop * (num_frame - 1)`` samples (exactly ``num_frame`` STFT frames).
    Cores of ``L - 2 * trim`` samples tile each validation track (their count rounded up, the
    last core zero-padded at its end), and each item is its core with ``trim`` zeros on either
    side (zeros, not the neighbouring audio: as official); the loss covers the whole window.
    Training passes :func:`lightsaft.spectral.edge_trim` as ``trim``: the official
    ``get_trim_length`` (``ceil(5000 / hop) * hop``), capped at a quarter window for small configs.
    ``chunks_per_track`` keeps that many cores per track, evenly spread. Items are ordered by
    track, then core, then condition 0..3. ``where``: each item also says where its core lies
    (:class:`lightsaft.training.val_sdr.ValSdr` assembles whole-track scores from them).
    """

    def __init__(
        self, cache: Cache, num_frame: int, chunks_per_track: int | None = None, *, trim: int, where: bool = False
    ):
        self.cache, self.where = cache, where
        self.window, self.trim = window_samples(num_frame, cache.manifest["hop_length"]), trim
        self.core = self.window - 2 * trim
        if trim < 0 or self.core <= 0:
            raise DataError(f"validation trim {trim}: must leave part of the {self.window}-sample window")
        self.chunks: list[tuple[str, int]] = []
        self.names = cache.tracks("valid")
        for name in self.names:
            count = math.ceil(cache.samples(name) / self.core)
            keep = range(count)
            if chunks_per_track is not None and chunks_per_track < count:
                keep = np.linspace(0, count - 1, chunks_per_track).round().astype(int).tolist()
            self.chunks += [(name, i * self.core) for i in keep]
        if not self.chunks:
            raise DataError(f"{cache.path}: no validation tracks; rerun the download and prepare stages")

    def __len__(self) -> int:
        return len(self.chunks) * len(TARGETS)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        (name, start), condition = self.chunks[index // len(TARGETS)], index % len(TARGETS)
        target = TARGETS[condition]
        audio = self.cache.load_audio(name, start, start + self.core, stems=("mixture", target))
        waves = []
        for stem in ("mixture", target):
            wave = np.zeros((self.window, 2), dtype=np.float32)
            wave[self.trim : self.trim + len(audio[stem])] = audio[stem]
            waves.append(torch.from_numpy(wave))
        if self.where:  # issue 23 (val_sdr): which track, and the samples of the window that are the track's
            kept = len(audio[target])
            return *waves, torch.tensor(condition), torch.tensor([self.names.index(name), self.trim, self.trim + kept])
        return waves[0], waves[1], torch.tensor(condition)
