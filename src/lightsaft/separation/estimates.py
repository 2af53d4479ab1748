"""The ``separate`` stage: every test track of the cache through the trained model, written as
MUSDB's estimates layout (``test/<track>/<target>.wav``), which museval reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..data.audio import write_audio
from ..devices import inference_device
from ..model.unet import Separator
from ..paths import atomic_dir
from ..progress import progress
from ..spectral import EDGE_SAMPLES, SAMPLE_RATE
from ..weights.ours import load_weights
from .params import AUTO
from .track import SeparationError, separate_track


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
