"""Where the model windows of a track lie, and how much of each window's output counts.

A model window holds ``hop * (num_frame - 1)`` samples, i.e. ``num_frame`` STFT frames. Its
edges see less context (STFT reflect padding, the U-Net's zero padding), so, as in the official
code, ``ceil(min_trim / hop) * hop`` samples are dropped at each side of every window. Two ways
to put the kept middles together (``protocol``):

- ``crossfade`` (default): a window whose shifted copies sum to exactly one, any overlap, and the
  track padded so that its first and last samples are also covered at full weight: an identity
  model gives back its input.
- ``official``: the official ``separate_track``, for comparing with published figures: overlap 0
  or up to 0.5, halves where two chunks overlap, and its quirks (the window before last may miss
  its right context; without overlap, neighbouring chunks simply abut).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..spectral import EDGE_SAMPLES, edge_trim, window_samples


@dataclass
class Chunk:
    start: int  # the window's first sample, in track samples (negative: before the track starts)
    weight: torch.Tensor  # [window]: weight of each output sample (0 on the dropped edges)
    audible: tuple[int, int]  # the window samples read from the track; the rest is silence (official quirks)


@dataclass(frozen=True)
class Plan(Sequence[Chunk]):
    """A track's chunks in order of their start, each made when asked for: a plan takes no memory
    however long the track (an hour at a small model's windows is a million chunks)."""

    size: int
    make: Callable[[int], Chunk]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self.make(i) for i in range(*index.indices(self.size))]
        if index < 0:
            index += self.size
        if not 0 <= index < self.size:
            raise IndexError(f"chunk {index} of {self.size}")
        return self.make(index)


def crossfade(kept: int, overlap: float) -> tuple[np.ndarray, int]:
    """A window of ``kept`` samples and the step at which its shifted copies sum to one.

    The window is a rectangle one step long smoothed by a unit-sum Hann kernel as long as the
    shared part: rectangles one step apart tile the line, and smoothing keeps the sum at one,
    for any overlap (with overlap <= 0.5 it is a flat top with smooth S-shaped ramps).
    """
    shared = min(round(overlap * kept), kept - 1)  # at least one new sample per step
    step = kept - shared
    kernel = np.hanning(shared + 3)[1:-1]  # shared + 1 strictly positive taps
    ramp = np.concatenate([np.zeros(step), np.cumsum(kernel / kernel.sum()), np.ones(step)])
    n = np.arange(kept)
    return ramp[n + step] - ramp[n], step


def crossfade_plan(length: int, window: int, edge: int, overlap: float) -> Plan:
    fade, step = crossfade(window - 2 * edge, overlap)
    kept, shared = len(fade), len(fade) - step
    weight = torch.zeros(window)
    weight[edge : edge + kept] = torch.as_tensor(fade, dtype=torch.float32)
    lead = edge + shared  # the first window starts this far before the track: dropped edge + fade-in
    return Plan(math.ceil((length + shared) / step), lambda c: Chunk(c * step - lead, weight, (0, window)))


def official_trim(hop_length: int, min_trim: int = EDGE_SAMPLES) -> int:
    """The official ``get_trim_length``: whole hops, at least ``min_trim`` samples (at least two hops:
    :func:`lightsaft.separation.params.check_protocol` refuses less)."""
    return math.ceil(min_trim / hop_length) * hop_length


def official_plan(length: int, window: int, trim: int, overlap: float) -> Plan:
    """The chunks of the official ``SingleTrackSet`` and the masks ``separate_track`` applies.

    Chunk c keeps ``[c*step, c*step + kept)``; where two kept parts overlap each counts half.
    Two quirks of the official code are kept: a chunk that starts less than ``trim`` samples into
    the track reads silence instead of its left context, and one that ends within ``trim`` samples
    of the track end, but is not the last one, reads silence instead of its right context and
    halves nothing.
    """
    kept = window - 2 * trim
    step = int(kept * (1 - overlap))
    shared = kept - step
    masks: dict[tuple[bool, bool], torch.Tensor] = {}

    def mask(halve_start: bool, halve_end: bool) -> torch.Tensor:
        if (halve_start, halve_end) not in masks:
            m = torch.zeros(window)
            m[trim : window - trim] = 1
            if halve_start:
                m[: trim + shared] *= 0.5
            if halve_end:
                m[window - trim - shared :] *= 0.5
            masks[halve_start, halve_end] = m
        return masks[halve_start, halve_end]

    overlapping = overlap > 0

    def chunk(c: int) -> Chunk:
        start = c * step
        first = trim if start < trim else 0
        if start + kept > length:  # the last chunk
            return Chunk(start - trim, mask(overlapping and c > 0, False), (first, window))
        if start + kept + trim < length:
            halve_end = overlapping and start + step < length
            return Chunk(start - trim, mask(overlapping and c > 0, halve_end), (first, window))
        return Chunk(start - trim, mask(False, False), (first, window - trim))

    return Plan(max(1, math.ceil((length - kept) / step) + 1), chunk)


def plan_chunks(params: dict[str, Any], length: int, protocol: str, overlap: float, min_trim: int) -> tuple[Plan, int]:
    """The chunks of a track of ``length`` samples for this model config, and the window length
    (the options as :data:`lightsaft.separation.params.SEPARATE` validates them)."""
    hop, num_frame = params["hop_length"], params["num_frame"]
    window = window_samples(num_frame, hop)
    if protocol == "crossfade":
        return crossfade_plan(length, window, edge_trim(hop, num_frame, min_trim), overlap), window
    return official_plan(length, window, official_trim(hop, min_trim), overlap), window
