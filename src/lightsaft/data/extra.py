"""``data.extra_train``: your own stems, as further training tracks (validation and test stay MUSDB18's).

Each root holds a folder per track with ``vocals``, ``drums``, ``bass`` and ``other`` as wav or
flac, at any sample rate, mono or stereo (``mixture`` optional: training mixes the stems itself).
``download`` checks every file by decoding it whole and lists the tracks in ``dataset.json``,
with a manifest of each root (files, sizes, mtimes); ``prepare`` decodes them once more,
duplicates mono, resamples to 44.1 kHz (:func:`load_extra_track`) and caches their
spectrograms like any train track; ``train`` refuses a root whose files differ from that
manifest (:func:`check_extra_roots`), because DVC sees only the param, not the folders.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from ..errors import DataError
from ..paths import in_project
from ..spectral import SAMPLE_RATE, TARGETS
from .audio import read_audio, resample, to_stereo

SUFFIXES = (".wav", ".flac")
OPTIONAL = ("mixture",)
RECORD = "extra_train.json"  # in the cache: each root as download listed it, for train to compare
BLOCK = 1 << 18  # frames decoded at a time when checking a file


def scan_extra_roots(roots: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The train tracks of every root (each file decoded whole to check it) and each root's
    record: its path, track count and manifest. A track folder that lacks a stem, holds stems of
    different lengths or rates, or a file that cannot be decoded is refused, naming the path."""
    tracks: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    for index, given in enumerate(roots):
        root = in_project(given)
        folders = track_folders(root, given)
        for folder in folders:
            files = stem_files(folder)
            rate, frames = check_track(files)
            name = f"{root.name}/{folder.name}"
            if any(t["name"] == name for t in tracks):
                raise DataError(
                    f"{folder}: another data.extra_train root also ends in {root.name!r} and holds a track "
                    f"{folder.name!r}; rename one of the two folders (tracks are named <root>/<track>)"
                )
            files = {stem: os.path.abspath(path) for stem, path in files.items()}
            tracks.append({"name": name, "split": "train", "files": files, "extra": index, "rate": rate,
                           "frames": frames})  # fmt: skip
        records.append({"root": os.path.abspath(root), "given": given, "tracks": len(folders),
                        "manifest": manifest(root)})  # fmt: skip
    return tracks, records


def track_folders(root: Path, given: str) -> list[Path]:
    if not root.is_dir():
        raise DataError(f"data.extra_train: {given!r} ({root}) is not a folder")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(
            f"{root}: no track folders; data.extra_train roots hold one folder per track with "
            f"{', '.join(TARGETS)} as wav or flac"
        )
    return folders


def stem_files(folder: Path) -> dict[str, Path]:
    """Each stem's file in a track folder (``mixture`` when there is one)."""
    files = {}
    for stem in (*TARGETS, *OPTIONAL):
        found = [folder / f"{stem}{suffix}" for suffix in SUFFIXES if (folder / f"{stem}{suffix}").is_file()]
        if len(found) > 1:
            raise DataError(f"{folder}: both {found[0].name} and {found[1].name}; keep one of them")
        if found:
            files[stem] = found[0]
        elif stem not in OPTIONAL:
            raise DataError(
                f"{folder / stem}.wav: missing (nor {stem}.flac); each track folder of data.extra_train needs "
                f"{', '.join(TARGETS)} as wav or flac (mixture optional: the sum when absent)"
            )
    return files


def check_track(files: dict[str, Path]) -> tuple[int, int]:
    """Decode every file whole; the stems must share one sample rate and length. Returns both."""
    shapes = {stem: _decode_check(path) for stem, path in files.items()}
    (first, (rate, frames)), *others = shapes.items()
    for stem, (other_rate, other_frames) in others:
        if other_rate != rate:
            raise DataError(
                f"{files[stem]}: {other_rate} Hz, but {files[first].name} is {rate} Hz; the stems of a track "
                f"must share one sample rate (any rate: they are resampled to {SAMPLE_RATE} Hz at prepare)"
            )
        if other_frames != frames:
            raise DataError(
                f"{files[stem]}: {other_frames} samples, but {files[first].name} has {frames}; the stems of a "
                f"track must be equally long"
            )
    return rate, frames


def _decode_check(path: Path) -> tuple[int, int]:
    """(sample rate, frames) of a file that decodes to its end into finite mono or stereo samples."""
    try:
        info = sf.info(str(path))
        frames = 0
        for block in sf.blocks(str(path), blocksize=BLOCK, dtype="float32", always_2d=True):
            if not np.isfinite(block).all():
                raise DataError(f"{path}: contains NaN or infinite samples")
            frames += len(block)
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        raise DataError(f"{path}: cannot be decoded ({e}); replace it with a wav or flac file") from None
    if info.channels not in (1, 2):
        raise DataError(f"{path}: {info.channels} channels; stems must be mono or stereo")
    if frames != info.frames or frames == 0:
        raise DataError(f"{path}: decoded {frames} samples, its header says {info.frames}; the file is truncated")
    return info.samplerate, frames


def manifest(root: Path) -> list[list[Any]]:
    """The audio files of a root's track folders: ``[path relative to the root, size, mtime_ns]``."""
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in SUFFIXES and path.is_file():
                stat = path.stat()
                found.append([str(path.relative_to(root)), stat.st_size, stat.st_mtime_ns])
    return found


# ---------------------------------------------------------------------------------------
# prepare: the tracks' audio at 44.1 kHz
def extra_samples(track: dict[str, Any]) -> int:
    """A track's length at 44.1 kHz (what :func:`~lightsaft.data.audio.resample` returns)."""
    return math.ceil(track["frames"] * SAMPLE_RATE / track["rate"])


def load_extra_track(track: dict[str, Any]) -> dict[str, np.ndarray]:
    """The stems (and mixture: the file, or their sum) as float32 ``[samples, 2]`` at 44.1 kHz."""
    audio = {}
    for stem, path in track["files"].items():
        wave, rate = read_audio(path)
        if rate != track["rate"] or len(wave) != track["frames"]:
            raise DataError(f"{path}: changed since download listed it; rerun download (dvc repro -f download)")
        audio[stem] = resample(to_stereo(wave, path), rate, SAMPLE_RATE)
    if "mixture" not in audio:
        audio["mixture"] = sum(audio[stem] for stem in TARGETS)
    return {stem: audio[stem] for stem in ("mixture", *TARGETS)}


# ---------------------------------------------------------------------------------------
# train: the roots are still what download listed
def check_extra_roots(cache: Any) -> None:
    """Refuse to train on a root whose files differ from the manifest ``download`` recorded
    (``cache``: a :class:`~lightsaft.data.cache.Cache`; ``prepare`` copies the record into it)."""
    record = Path(cache.path) / RECORD
    if not record.is_file():
        return
    for root in json.loads(record.read_text()):
        path = Path(root["root"])
        now = manifest(path) if path.is_dir() else []
        listed = {entry[0]: entry[1:] for entry in root["manifest"]}
        found = {entry[0]: entry[1:] for entry in now}
        change = next((f"{name} {what}" for name, what in _differences(listed, found)), None)
        if change is not None:
            raise DataError(
                f"data.extra_train root {path}: {change} since download listed it; DVC sees only the param, not "
                f"the files: rerun download (dvc repro -f download), then dvc repro"
            )


def _differences(listed: dict[str, list], found: dict[str, list]):
    for name in sorted(set(listed) | set(found)):
        if name not in found:
            yield name, "was removed"
        elif name not in listed:
            yield name, "was added"
        elif listed[name][0] != found[name][0]:
            yield name, f"changed size ({listed[name][0]} -> {found[name][0]} bytes)"
        elif listed[name][1] != found[name][1]:
            yield name, "was modified (its mtime changed)"
