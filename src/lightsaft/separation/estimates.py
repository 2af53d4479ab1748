"""The ``separate`` stage: every test track of the cache through the trained model, written as
MUSDB's estimates layout with 16-bit FLAC files (``test/<track>/<target>.flac``), and the samples
each file clipped (``clipped.json``).

16-bit, as the official evaluation scored: it wrote its estimates to a 16-bit file and read them
back, clipping whatever lay beyond [-1, 1]; FLAC stores that losslessly in 0.29 of float32 wav's
bytes (measured on separated music: benchmarks/separate_disk.py). Tracks stream through in blocks
(:func:`lightsaft.separation.track.separate_stream`), so a long track needs no more memory than a
short one.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from ..devices import inference_device
from ..model.unet import Separator
from ..paths import atomic_dir
from ..progress import progress
from ..spectral import EDGE_SAMPLES, SAMPLE_RATE, TARGETS
from ..weights.ours import load_weights
from .params import AUTO
from .track import SeparationError, separate_stream
from .writer import AudioWriter

FORMAT = "flac"  # 16-bit PCM (separation/writer.py)
CLIPPED = "clipped.json"  # {track: {target: samples clipped}}, beside test/


def load_model(weights_path: str | Path) -> Separator:
    """Our weights file (``models/weights.pt``), with a separation error naming it."""
    try:
        return load_weights(weights_path)
    except (FileNotFoundError, ValueError) as e:
        raise SeparationError(str(e)) from None


class CacheSource:
    """A test track's mixture in the cache, read by range (:mod:`lightsaft.data.stream`)."""

    rate, channels = SAMPLE_RATE, 2

    def __init__(self, cache: Any, track: str):
        self.cache, self.track, self.frames = cache, track, cache.samples(track)

    def read(self, start: int, stop: int) -> np.ndarray:
        out = np.zeros((stop - start, 2), dtype=np.float32)
        lo, hi = max(start, 0), min(stop, self.frames)
        if hi > lo:
            out[lo - start : hi - start] = self.cache.load_audio(self.track, lo, hi, stems=("mixture",))["mixture"]
        return out


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
    """The ``separate`` stage: every test track of ``cache`` -> ``out_dir/test/<track>/<target>.flac``
    and ``out_dir/clipped.json``.

    ``cache`` is anything with ``.tracks("test")``, ``.samples(name)`` and ``.load_audio(name, start,
    stop, stems)`` (``lightsaft.data.cache.Cache``). The options are :func:`separate_stream`'s.
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
    clipped: dict[str, dict[str, int]] = {}
    with inference_device(device) as dev, atomic_dir(out_dir) as tmp:
        for track in progress(tracks, "separate", "track"):
            clipped[track] = separate_to_files(model, CacheSource(cache, track), tmp / "test" / track, dev, options)
        (tmp / CLIPPED).write_text(json.dumps(clipped, indent=1, ensure_ascii=False) + "\n")
    return out_dir


def separate_to_files(model: Separator, source: Any, folder: Path, device: Any, options: dict) -> dict[str, int]:
    """One track, block by block, into ``folder/<target>.flac``; returns the samples clipped per target."""
    with ExitStack() as files:
        writers = [files.enter_context(AudioWriter(folder, t, SAMPLE_RATE, 2, FORMAT)) for t in TARGETS]
        for block in separate_stream(model, source, TARGETS, device=device, **options):
            for writer, audio in zip(writers, block):
                writer.write(audio)
    return {target: writer.clipped for target, writer in zip(TARGETS, writers)}
