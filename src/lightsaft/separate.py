"""Whole-track separation: chunk the mixture, run the model over chunks and targets, overlap-add.

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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data.audio import write_audio
from .devices import inference_device, resolve_device
from .errors import LightSAFTError
from .model import Separator, load_weights
from .paths import atomic_dir
from .progress import Progress, progress
from .spectral import EDGE_SAMPLES, SAMPLE_RATE, TARGETS, edge_trim, window_samples

PROTOCOLS = ("crossfade", "official")
AUTO = "auto"  # batch size from the memory budget (the default of the stage and the CLI alike)
# Beyond these a device gains nothing more: a GPU at 64; a CPU is no faster above ~8 (measured,
# benchmarks/separate_eval.py on 2 cores: demo config 0.60 s of audio per s at 8, 0.38 at 64).
MAX_AUTO_BATCH = {"cuda": 64, "cpu": 8}
MEMORY_SHARE = {"cuda": 0.5, "cpu": 0.25}  # of the free memory a separation may take
PRECISIONS = ("float32", "bf16")


class SeparationError(LightSAFTError, RuntimeError):
    """Separation cannot run as asked: bad targets/overlap/device, weights, output folder."""


# ---------------------------------------------------------------------------------------
# Chunking plans: where each model window lies and how much of its output counts
@dataclass
class Chunk:
    start: int  # the window's first sample, in track samples (negative: before the track starts)
    weight: torch.Tensor  # [window]: weight of each output sample (0 on the dropped edges)
    audible: tuple[int, int]  # the window samples read from the track; the rest is silence (official quirks)


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


def crossfade_plan(length: int, window: int, edge: int, overlap: float) -> list[Chunk]:
    fade, step = crossfade(window - 2 * edge, overlap)
    kept, shared = len(fade), len(fade) - step
    weight = torch.zeros(window)
    weight[edge : edge + kept] = torch.as_tensor(fade, dtype=torch.float32)
    lead = edge + shared  # the first window starts this far before the track: dropped edge + fade-in
    return [Chunk(c * step - lead, weight, (0, window)) for c in range(math.ceil((length + shared) / step))]


def official_trim(hop_length: int, min_trim: int = EDGE_SAMPLES) -> int:
    """The official ``get_trim_length``: whole hops, at least ``min_trim`` samples and two hops."""
    per_hop = math.ceil(min_trim / hop_length)
    if per_hop < 2:
        raise SeparationError(f"min_trim {min_trim}: the official protocol trims at least two hops ({2 * hop_length})")
    return per_hop * hop_length


def official_plan(length: int, window: int, trim: int, overlap: float) -> list[Chunk]:
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
    chunks = []
    for c in range(max(1, math.ceil((length - kept) / step) + 1)):
        start = c * step
        first = trim if start < trim else 0
        if start + kept > length:  # the last chunk
            chunk = Chunk(start - trim, mask(overlapping and c > 0, False), (first, window))
        elif start + kept + trim < length:
            halve_end = overlapping and start + step < length
            chunk = Chunk(start - trim, mask(overlapping and c > 0, halve_end), (first, window))
        else:
            chunk = Chunk(start - trim, mask(False, False), (first, window - trim))
        chunks.append(chunk)
    return chunks


def plan_chunks(
    params: dict[str, Any], length: int, protocol: str, overlap: float, min_trim: int
) -> tuple[list[Chunk], int]:
    """The chunks of a track of ``length`` samples for this model config, and the window length."""
    hop, num_frame = params["hop_length"], params["num_frame"]
    window = window_samples(num_frame, hop)
    if protocol == "crossfade":
        return crossfade_plan(length, window, edge_trim(hop, num_frame, min_trim), overlap), window
    trim = official_trim(hop, min_trim)
    if window - 2 * trim <= 0:
        raise SeparationError(
            f"the official protocol trims {trim} samples at each side of a {window}-sample window "
            f"(hop_length * (num_frame - 1)), which leaves nothing; lower min_trim or use the crossfade protocol"
        )
    return official_plan(length, window, trim, overlap), window


# ---------------------------------------------------------------------------------------
# Running the model
def check_options(
    targets: Iterable[str],
    overlap: float,
    batch_size: int | str,
    protocol: str = "crossfade",
    min_trim: int = EDGE_SAMPLES,
    precision: str = "float32",
) -> tuple[str, ...]:
    """Validate the separation options (before any work starts); returns the targets as a tuple."""
    targets = tuple(targets)
    if not targets or any(t not in TARGETS for t in targets):
        raise SeparationError(f"targets {','.join(targets) or '(none)'}: choose one or more of {', '.join(TARGETS)}")
    if protocol not in PROTOCOLS:
        raise SeparationError(f"protocol {protocol!r}: choose {' or '.join(PROTOCOLS)}")
    top = 0.5 if protocol == "official" else 0.9
    if not 0 <= overlap <= top:
        raise SeparationError(f"overlap {overlap}: must be between 0 and {top} with the {protocol} protocol")
    if batch_size != AUTO and not (isinstance(batch_size, int) and batch_size >= 1):
        raise SeparationError(f"batch size {batch_size!r}: must be {AUTO!r} or at least 1")
    if min_trim < 0:
        raise SeparationError(f"min_trim {min_trim}: must be at least 0 samples")
    if precision not in PRECISIONS:
        raise SeparationError(f"precision {precision!r}: choose {' or '.join(PRECISIONS)}")
    return targets


def item_bytes(model_params: dict[str, Any]) -> int:
    """Memory one (chunk, target) pair takes in the forward pass (float32, inference): about 2n+6
    full-resolution feature maps of C channels for a TFC block of n dense layers (measured on CPU
    at the seed config: 380 MB per item; this gives 400 MB)."""
    frames, bins, channels = (
        model_params["num_frame"],
        model_params["n_fft"] // 2 + 1,
        model_params["internal_channels"],
    )
    return 4 * frames * bins * channels * (2 * model_params["n_internal_layers"] + 6)


def auto_batch_size(model_params: dict[str, Any], device: torch.device) -> int:
    """(chunk, target) pairs per forward pass that fit a share of the memory free now (a GPU's own
    memory, or the machine's for the CPU), at most the device's :data:`MAX_AUTO_BATCH`."""
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        import psutil

        free = psutil.virtual_memory().available
    budget = free * MEMORY_SHARE.get(device.type, MEMORY_SHARE["cpu"])
    most = MAX_AUTO_BATCH.get(device.type, MAX_AUTO_BATCH["cpu"])
    return int(max(1, min(most, budget // item_bytes(model_params))))


def separate_track(
    model: Separator,
    mixture: np.ndarray,
    targets: Sequence[str] = TARGETS,
    overlap: float = 0.5,
    batch_size: int | str = AUTO,
    device: str | torch.device = "auto",
    protocol: str = "crossfade",
    min_trim: int = EDGE_SAMPLES,
    precision: str = "float32",
) -> dict[str, np.ndarray]:
    """Separate a whole stereo 44.1 kHz track ``[L, 2]`` into ``{target: float32 [L, 2]}``.

    Runs batches of (chunk, target) pairs through the model in eval mode, in float32 or, with
    ``precision="bf16"``, under bf16 autocast. Moves the model to ``device``.
    """
    targets = check_options(targets, overlap, batch_size, protocol, min_trim, precision)
    if mixture.ndim != 2 or mixture.shape[1] != 2 or len(mixture) == 0:
        raise SeparationError(f"expected a stereo mixture [samples, 2], got shape {mixture.shape}")
    dev = resolve_device(device)
    if precision == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise SeparationError(f"precision bf16: {dev} does not support bfloat16; use float32")
    model = model.to(dev).eval()
    batch_size = auto_batch_size(model.params, dev) if batch_size == AUTO else batch_size
    length = len(mixture)
    chunks, window = plan_chunks(model.params, length, protocol, overlap, min_trim)

    # The track in a buffer that holds every window: track sample i at index lead + i.
    lead = max(0, -chunks[0].start)
    size = lead + max(length, chunks[-1].start + window)
    padded = torch.zeros(size, 2, device=dev)
    padded[lead : lead + length] = torch.as_tensor(mixture, dtype=torch.float32, device=dev)
    out = torch.zeros(len(targets), size, 2, device=dev)

    weights = {id(chunk.weight): chunk.weight.to(dev)[:, None] for chunk in chunks}  # a few distinct ones

    def window_audio(chunk: Chunk) -> torch.Tensor:
        audio = padded[lead + chunk.start : lead + chunk.start + window]
        if chunk.audible == (0, window):
            return audio
        silent = torch.ones(window, 1, dtype=torch.bool, device=dev)
        silent[chunk.audible[0] : chunk.audible[1]] = False
        return audio.masked_fill(silent, 0)

    pairs = [(c, k) for c in range(len(chunks)) for k in range(len(targets))]
    steps = range(0, len(pairs), batch_size)
    with torch.inference_mode(), Progress("  chunks", len(steps), "batch", lines=False, leave=False) as bar:
        for first in steps:
            batch = pairs[first : first + batch_size]
            ids = sorted({c for c, _ in batch})  # one STFT per chunk, shared by its targets
            spec = model.front.stft(torch.stack([window_audio(chunks[c]) for c in ids]))
            spec = spec[[ids.index(c) for c, _ in batch]]
            condition = torch.tensor([TARGETS.index(targets[k]) for _, k in batch], device=dev)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                estimate = model(spec, condition)
            waves = model.front.istft(estimate.float(), length=window)
            for (c, k), wave in zip(batch, waves):
                begin = lead + chunks[c].start
                out[k, begin : begin + window] += wave * weights[id(chunks[c].weight)]
            bar.advance()
    result = out[:, lead : lead + length].cpu().numpy()
    return {target: result[k] for k, target in enumerate(targets)}


# ---------------------------------------------------------------------------------------
# The separate stage and the command line
def load_model(weights_path: str | Path) -> Separator:
    """Our weights file (``models/weights.pt``), with a separation error naming it."""
    try:
        return load_weights(weights_path)
    except (FileNotFoundError, ValueError) as e:
        raise SeparationError(str(e)) from None


def _write_estimates(folder: Path, estimates: dict[str, np.ndarray], rate: int) -> None:
    for target, audio in estimates.items():
        write_audio(folder / f"{target}.wav", audio, rate)


def separate_tracks(
    weights_path: str | Path,
    cache: Any,
    out_dir: str | Path,
    overlap: float = 0.5,
    batch_size: int | str = AUTO,
    device: str = "auto",
    protocol: str = "crossfade",
    min_trim: int = EDGE_SAMPLES,
    precision: str = "float32",
) -> Path:
    """The ``separate`` stage: every test track of ``cache`` -> ``out_dir/test/<track>/<target>.wav``.

    ``cache`` is anything with ``.tracks("test")`` and ``.load_audio(name)`` (``lightsaft.data.cache.Cache``).
    The layout is MUSDB's estimates layout, which museval reads. The options are :func:`separate_track`'s.
    """
    options = dict(overlap=overlap, batch_size=batch_size, protocol=protocol, min_trim=min_trim, precision=precision)
    check_options(TARGETS, **options)
    model = load_model(weights_path)
    tracks = cache.tracks("test")
    if not tracks:
        raise SeparationError("the cache holds no test tracks; rerun the prepare stage")
    for track in tracks:
        if Path(track).name != track or track in ("", ".", ".."):
            raise SeparationError(f"track name {track!r} cannot be a folder name")
    out_dir = Path(out_dir)
    with inference_device(device) as dev, atomic_dir(out_dir) as tmp:
        for track in progress(tracks, "separate", "track"):
            mixture = cache.load_audio(track, stems=("mixture",))["mixture"]
            estimates = separate_track(model, mixture, device=dev, **options)
            _write_estimates(tmp / "test" / track, estimates, SAMPLE_RATE)
    return out_dir
