"""The ``prepare`` stage: a memory-mapped spectrogram cache, so training never decodes audio.

Layout of a cache folder (written to a temporary folder beside it, then renamed):

* ``manifest.json``: format, STFT parameters, dtype, and per track its split, samples, frames
  and source files (path, size, sha256);
* ``spec/<i>.npy`` (train tracks): ``[target, channel, frame, bin]`` = ``[4, 4, T, n_fft//2+1]``,
  targets in :data:`~lightsaft.spectral.TARGETS` order, channels ``Re L, Re R, Im L, Im R``: the
  whole-track STFT of each stem in the model's layout (so ``spec[k]`` is ``[4, T, F]``);
* ``audio/<i>.npy`` (valid/test tracks of ``.stem.mp4`` sources): float32 ``[5, L, 2]``, stems
  in :data:`~lightsaft.data.tracks.STEMS` order. Wav sources keep a pointer to their files instead.

Source files are identified by sha256 (content, not mtime: a copied data set stays valid).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from ..paths import atomic_dir, portable, resolve
from ..spectral import SAMPLE_RATE, TARGETS, SpectralFrontEnd, num_frames
from ..errors import DataError
from .tracks import SPLITS, STEMS, file_sha256, load_track, read_dataset, source_files, track_samples

CACHE_FORMAT = 1
SPEC_LAYOUT = "[target (vocals, drums, bass, other), channel (Re L, Re R, Im L, Im R), frame, bin]"
FLOAT16_MAX = 65504.0


def _spec_bytes(samples: int, n_fft: int, hop_length: int, dtype: str) -> int:
    return len(TARGETS) * 4 * num_frames(samples, hop_length) * (n_fft // 2 + 1) * np.dtype(dtype).itemsize


def prepare(dataset_json: str | Path, out_dir: str | Path, n_fft: int, hop_length: int, dtype: str = "float16") -> Path:
    """Decode every track of ``dataset.json`` once and write the cache to ``out_dir`` (atomically)."""
    if dtype not in ("float16", "float32"):
        raise DataError(f"prepare.dtype = {dtype!r}: use float16 or float32")
    dataset, out_dir = read_dataset(dataset_json), Path(out_dir)
    tracks = dataset["tracks"]
    need = sum(
        _spec_bytes(track_samples(t), n_fft, hop_length, dtype)
        if t["split"] == "train"
        else len(STEMS) * track_samples(t) * 2 * 4
        if "stem_file" in t
        else 0
        for t in tracks
    )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out_dir.parent).free
    counts = ", ".join(f"{sum(t['split'] == s for t in tracks)} {s}" for s in SPLITS)
    print(f"prepare: {counts} tracks -> {out_dir} needs about {need / 1e6:,.1f} MB ({free / 1e9:,.1f} GB free)")
    if need * 1.02 + 1e7 > free:
        raise DataError(
            f"{out_dir}: the cache needs about {need / 1e9:.2f} GB but only {free / 1e9:.2f} GB "
            f"are free on that disk; free some space"
            f"{' or use prepare.dtype=float16 (half the size)' if dtype == 'float32' else ''}"
        )
    front = SpectralFrontEnd(n_fft, hop_length)
    with atomic_dir(out_dir) as tmp:
        raw_dir = Path(dataset_json).parent  # the download stage's output: moves with a DVC copy
        entries = [
            _prepare_track(i, t, tmp, out_dir, raw_dir, front, dtype)
            for i, t in enumerate(tqdm(tracks, desc="prepare", unit="track"))
        ]
        manifest = {
            "format": CACHE_FORMAT,
            "source": dataset["source"],
            "dataset_sha256": dataset["sha256"],
            "sample_rate": SAMPLE_RATE,
            "n_fft": n_fft,
            "hop_length": hop_length,
            "dtype": dtype,
            "spec_layout": SPEC_LAYOUT,
            "stems": list(STEMS),
            "file_hash": "sha256",
            "tracks": entries,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return out_dir


def _prepare_track(
    index: int, track: dict[str, Any], tmp: Path, out_dir: Path, raw_dir: Path, front: SpectralFrontEnd, dtype: str
) -> dict[str, Any]:
    audio = load_track(track)
    samples = len(audio["mixture"])
    entry: dict[str, Any] = {
        "name": track["name"],
        "split": track["split"],
        "samples": samples,
        "frames": num_frames(samples, front.hop_length),
        "sources": [
            {"path": portable(p, out_dir, raw_dir), "size": p.stat().st_size, "sha256": file_sha256(p)}
            for p in source_files(track)
        ],
    }
    if track["split"] == "train":
        entry["spec"] = f"spec/{index:04d}.npy"
        _write_spec(tmp / entry["spec"], audio, front, dtype, track["name"])
    elif "stem_file" in track:
        entry["audio"] = f"audio/{index:04d}.npy"
        (tmp / "audio").mkdir(exist_ok=True)
        np.save(tmp / entry["audio"], np.stack([audio[stem] for stem in STEMS]).astype(np.float32))
    else:
        entry["files"] = {stem: portable(p, out_dir, raw_dir) for stem, p in track["files"].items()}
    return entry


def _write_spec(path: Path, audio: dict[str, np.ndarray], front: SpectralFrontEnd, dtype: str, name: str) -> None:
    path.parent.mkdir(exist_ok=True)
    frames, bins = num_frames(len(audio["mixture"]), front.hop_length), front.n_fft // 2 + 1
    out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(len(TARGETS), 4, frames, bins))
    for k, stem in enumerate(TARGETS):
        # |STFT| <= sum(window) * peak = n_fft / 2 * peak: refuse what float16 cannot hold.
        if dtype == "float16" and np.abs(audio[stem]).max() * front.n_fft / 2 > FLOAT16_MAX:
            raise DataError(
                f"{name}: {stem} is too loud for a float16 cache at n_fft={front.n_fft}; use prepare.dtype=float32"
            )
        with torch.no_grad():
            out[k] = front.stft(torch.from_numpy(audio[stem])[None])[0].numpy()
    out.flush()
    del out


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
