"""Whole-track separation: the chunks of :mod:`lightsaft.separation.plans` through the model,
batched over chunks and targets, overlap-added.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..devices import resolve_device
from ..errors import LightSAFTError
from ..model.unet import Separator
from ..progress import Progress
from ..spectral import EDGE_SAMPLES, TARGETS
from .params import AUTO
from .plans import Chunk, plan_chunks

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
    targets = tuple(targets)
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
