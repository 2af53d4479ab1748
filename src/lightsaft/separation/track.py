"""Separation of a track: the chunks of :mod:`lightsaft.separation.plans` through the model,
batched over chunks and targets, overlap-added, and handed on in blocks as soon as no later chunk
can change them (:func:`separate_stream`): memory holds a batch's span, not the track, so an hour
takes what a minute takes. :func:`separate_track` collects the blocks of an in-memory track.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from ..data.stream import ArraySource, Source
from ..devices import resolve_device
from ..errors import LightSAFTError
from ..model.unet import Separator
from ..progress import Progress
from ..spectral import EDGE_SAMPLES, SAMPLE_RATE, TARGETS
from .params import AUTO
from .plans import plan_chunks

# Beyond these a device gains nothing more: a GPU at 64; a CPU is no faster above ~8 (measured,
# benchmarks/separate_eval.py on 2 cores: demo config 0.60 s of audio per s at 8, 0.38 at 64).
MAX_AUTO_BATCH = {"cuda": 64, "cpu": 8}
MEMORY_SHARE = {"cuda": 0.5, "cpu": 0.25}  # of the free memory a separation may take


class SeparationError(LightSAFTError, RuntimeError):
    """Separation cannot run as asked: a mixture that is not stereo, a device without bf16, the output folder."""


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


@contextmanager
def true_float32(enabled: bool = True) -> Iterator[None]:
    """float32 as the authors' GPUs ran it: no TF32 for convolutions (cuDNN uses it for float32 by
    default from Ampere on) nor for matmuls; the flags are restored on exit."""
    if not enabled:
        yield
        return
    conv, matmul = torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")  # also torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = conv
        torch.set_float32_matmul_precision(matmul)


def separate_stream(
    model: Separator,
    source: Source,
    targets: Sequence[str] = TARGETS,
    overlap: float = 0.5,
    batch_size: int | str = AUTO,
    device: str | torch.device = "auto",
    protocol: str = "crossfade",
    min_trim: int = EDGE_SAMPLES,
    precision: str = "float32",
) -> Iterator[np.ndarray]:
    """Separate a stereo 44.1 kHz source (:mod:`lightsaft.data.stream`: read by range, silence
    outside the track) into consecutive blocks ``float32 [len(targets), samples, 2]`` that cover
    the track, in order.

    Runs batches of (chunk, target) pairs through the model in eval mode, in true float32 (no
    TF32) or, with ``precision="bf16"``, under bf16 autocast. The batches, and the order in which
    window outputs are added, are those of the whole track at once: the blocks are the whole
    track's separation, with no seam where one ends. Moves the model to ``device``.
    """
    targets = tuple(targets)
    if source.channels != 2 or source.frames == 0:
        raise SeparationError(f"expected a stereo mixture [samples, 2], got shape {(source.frames, source.channels)}")
    dev = resolve_device(device)
    if precision == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise SeparationError(f"precision bf16: {dev} does not support bfloat16; use float32")
    model = model.to(dev).eval()
    batch_size = auto_batch_size(model.params, dev) if batch_size == AUTO else batch_size
    length, n = source.frames, len(targets)
    plan, window = plan_chunks(model.params, length, protocol, overlap, min_trim)
    weights: dict[int, torch.Tensor] = {}  # a few distinct ones, on the device
    conditions = torch.tensor([TARGETS.index(t) for t in targets], device=dev)

    # out[:, i] holds track sample begin + i: the sum of the window outputs added so far.
    begin, out = plan[0].start, torch.zeros(n, 0, 2, device=dev)
    done = 0  # track samples handed on
    pairs = len(plan) * n  # pair p: chunk p // n, target p % n
    steps = range(0, pairs, batch_size)
    with torch.inference_mode(), Progress("  chunks", len(steps), "batch", lines=False, leave=False) as bar:
        for first in steps:
            last = min(first + batch_size, pairs)
            ids = range(first // n, (last - 1) // n + 1)  # one STFT per chunk, shared by its targets
            chunks = {c: plan[c] for c in ids}
            lo, hi = chunks[ids[0]].start, chunks[ids[-1]].start + window
            audio = torch.as_tensor(source.read(lo, hi), device=dev)
            windows = []
            for chunk in chunks.values():
                wave = audio[chunk.start - lo : chunk.start - lo + window]
                if chunk.audible != (0, window):  # the official quirks: silence instead of the track
                    silent = torch.ones(window, 1, dtype=torch.bool, device=dev)
                    silent[chunk.audible[0] : chunk.audible[1]] = False
                    wave = wave.masked_fill(silent, 0)
                windows.append(wave)
            with true_float32(precision == "float32"):
                spec = model.front.stft(torch.stack(windows))[[p // n - ids[0] for p in range(first, last)]]
                condition = conditions[[p % n for p in range(first, last)]]
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    estimate = model(spec, condition)
                waves = model.front.istft(estimate.float(), length=window)
            if begin + out.shape[1] < hi:
                out = torch.cat([out, torch.zeros(n, hi - begin - out.shape[1], 2, device=dev)], dim=1)
            for p, wave in zip(range(first, last), waves):
                chunk = chunks[p // n]
                if id(chunk.weight) not in weights:
                    weights[id(chunk.weight)] = chunk.weight.to(dev)[:, None]
                at = chunk.start - begin
                out[p % n, at : at + window] += wave * weights[id(chunk.weight)]
            # Samples before the next chunk's start are final.
            final = min(length, plan[last // n].start) if last < pairs else length
            if final > done:
                yield out[:, done - begin : final - begin].cpu().numpy().copy()
                done = final
            if final > begin:
                out, begin = out[:, final - begin :].clone(), final
            bar.advance()


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
    """Separate a whole stereo 44.1 kHz track ``[L, 2]`` into ``{target: float32 [L, 2]}``: the
    blocks of :func:`separate_stream` (the options are its own), put together."""
    if mixture.ndim != 2 or mixture.shape[1] != 2 or len(mixture) == 0:
        raise SeparationError(f"expected a stereo mixture [samples, 2], got shape {mixture.shape}")
    source = ArraySource(np.asarray(mixture, dtype=np.float32), SAMPLE_RATE)
    options = dict(overlap=overlap, batch_size=batch_size, device=device, protocol=protocol, min_trim=min_trim)
    blocks = np.concatenate(list(separate_stream(model, source, targets, precision=precision, **options)), axis=1)
    return {target: blocks[k] for k, target in enumerate(targets)}
