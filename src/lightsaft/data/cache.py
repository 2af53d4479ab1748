"""The spectrogram cache that the ``prepare`` stage writes, memory-mapped so training never decodes audio.

Layout of a cache folder (see :mod:`lightsaft.prepare` for how it is written):

* ``manifest.json``: format, STFT parameters, dtype, the splits prepared, and per track its split,
  samples, frames and source files (path, size, sha256);
* ``spec/<i>.npy`` (train tracks): ``[target, channel, frame, bin]`` = ``[4, 4, T, n_fft//2+1]``,
  targets in :data:`~lightsaft.spectral.TARGETS` order, channels ``Re L, Re R, Im L, Im R``: the
  whole-track STFT of each stem in the model's layout (so ``spec[k]`` is ``[4, T, F]``);
* ``audio/<i>.npy`` (valid/test tracks of ``.stem.mp4`` sources): float32 ``[5, L, 2]``, stems
  in :data:`~lightsaft.data.tracks.STEMS` order. Wav sources keep a pointer to their files instead.
* ``extra_train.json`` (with ``data.extra_train``): each root's files as ``download`` listed them,
  which ``train`` compares with the folders (:func:`lightsaft.data.extra.check_extra_roots`); the
  manifest names the roots and marks their tracks (``extra``: the root's index).

Source files are identified by sha256 (content, not mtime: a copied data set stays valid).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from ..errors import DataError
from ..paths import resolve
from .tracks import SPLITS, STEMS

CACHE_FORMAT = 1
SPEC_LAYOUT = "[target (vocals, drums, bass, other), channel (Re L, Re R, Im L, Im R), frame, bin]"


class Cache:
    """A prepared cache; opening it checks its format and, when given, its STFT params and dtype."""

    def __init__(
        self, path: str | Path, n_fft: int | None = None, hop_length: int | None = None, dtype: str | None = None
    ):
        self.path = Path(path)
        manifest = self.path / "manifest.json"
        if not manifest.is_file():
            raise DataError(
                f"{self.path}: not a prepared cache (no manifest.json; an interrupted prepare "
                f"leaves none); run the prepare stage (dvc repro prepare)"
            )
        try:
            self.manifest: dict[str, Any] = json.loads(manifest.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{manifest}: not valid JSON ({e}); rerun the prepare stage") from None
        wanted = {"format": CACHE_FORMAT, "n_fft": n_fft, "hop_length": hop_length, "dtype": dtype}
        for key, want in wanted.items():
            if want is not None and self.manifest.get(key) != want:
                raise DataError(
                    f"{self.path}: built with {key} = {self.manifest.get(key)!r} but {want!r} is "
                    f"needed; rerun the prepare stage (dvc repro prepare)"
                )
        self._tracks = {t["name"]: t for t in self.manifest["tracks"]}
        self._open: dict[str, np.ndarray] = {}

    def digest(self) -> str:
        """sha256 of the manifest: which tracks (by content), how they were transformed."""
        return hashlib.sha256(json.dumps(self.manifest, sort_keys=True).encode()).hexdigest()

    def __getstate__(self) -> dict[str, Any]:
        # Memory maps are reopened in each DataLoader worker, never pickled as arrays.
        return {**self.__dict__, "_open": {}}

    def tracks(self, split: str) -> list[str]:
        if split not in SPLITS:
            raise ValueError(f"split {split!r}: use one of {', '.join(SPLITS)}")
        if split not in self.manifest.get("splits", SPLITS):
            raise DataError(
                f"{self.path}: prepared without its {split} tracks (only {', '.join(self.manifest['splits'])}: "
                f"train.pretrained is set, so nothing is trained); rerun prepare after unsetting it"
            )
        return [t["name"] for t in self.manifest["tracks"] if t["split"] == split]

    def track(self, name: str) -> dict[str, Any]:
        if name not in self._tracks:
            raise DataError(f"{self.path}: no track named {name!r}")
        return self._tracks[name]

    def frames(self, name: str) -> int:
        return self.track(name)["frames"]

    def samples(self, name: str) -> int:
        return self.track(name)["samples"]

    def _memmap(self, relative: str) -> np.ndarray:
        if relative not in self._open:
            try:
                self._open[relative] = np.load(self.path / relative, mmap_mode="r")
            except (OSError, ValueError) as e:
                path = self.path / relative
                raise DataError(f"{path}: unreadable ({e}); rerun the prepare stage") from None
        return self._open[relative]

    def resolve(self, recorded: str) -> Path:
        """A source path as recorded in the manifest (relative to the cache or absolute)."""
        return resolve(recorded, self.path)

    def spec(self, track: str) -> np.ndarray:
        """Read-only memory map ``[4 targets, 4 channels, frames, bins]`` of a train track."""
        entry = self.track(track)
        if "spec" not in entry:
            raise DataError(f"{track}: a {entry['split']} track; spectrograms are cached for train tracks only")
        return self._memmap(entry["spec"])

    def load_audio(
        self, track: str, start: int = 0, stop: int | None = None, stems: tuple[str, ...] = STEMS
    ) -> dict[str, np.ndarray]:
        """Waveforms of a valid/test track, float32 ``[L, 2]`` at 44.1 kHz (``start:stop`` samples)."""
        entry = self.track(track)
        if "audio" in entry:
            audio = self._memmap(entry["audio"])
            return {stem: np.array(audio[STEMS.index(stem), start:stop]) for stem in stems}
        if "files" not in entry:
            raise DataError(f"{track}: a train track; waveforms are kept for valid and test tracks only")
        sizes = {s["path"]: s["size"] for s in entry["sources"]}
        out = {}
        for stem in stems:
            recorded = entry["files"][stem]
            path = self.resolve(recorded)
            if not os.path.isfile(path) or os.path.getsize(path) != sizes[recorded]:
                raise DataError(
                    f"{path}: missing or changed since the cache was prepared; rerun the download and prepare stages"
                )
            out[stem], _ = sf.read(path, start=start, stop=stop, dtype="float32", always_2d=True)
        return out
