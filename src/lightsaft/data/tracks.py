"""MUSDB18 track lists: find the tracks of a tree, split them, record them, read them back.

A track is a dict ``{"name", "split", "files": {stem: path}}`` (wav trees: musdb18hq and the
synthetic set) or ``{"name", "split", "stem_file": path}`` (a MUSDB18 ``.stem.mp4``). The
``download`` stage writes these lists to ``dataset.json``; ``prepare`` reads them and decodes
every track through :func:`load_track`, which refuses audio the model cannot train on.
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import yaml

from ..errors import DataError
from ..paths import portable, resolve, write_text_atomic
from ..spectral import SAMPLE_RATE, TARGETS
from .audio import AudioError, probe, read_audio, read_stems
from .sources import SOURCES

STEMS = ("mixture",) + TARGETS
SPLITS = ("train", "valid", "test")
DATASET_FORMAT = 1


# ---------------------------------------------------------------------------------------
# Finding tracks
def musdb_validation_tracks() -> list[str]:
    """musdb's official validation tracks, read from its ``configs/mus.yaml`` (without importing it)."""
    spec = importlib.util.find_spec("musdb")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the musdb package is not installed (pip install musdb==0.4.3); it holds the "
            "official list of validation tracks, or set data.valid_tracks"
        )
    config = Path(next(iter(spec.submodule_search_locations))) / "configs" / "mus.yaml"
    with open(config) as f:
        return list(yaml.safe_load(f)["validation_tracks"])


def find_tree(folder: Path) -> Path | None:
    """The folder holding ``train/`` and ``test/``: ``folder`` itself or its only subfolder."""
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        return folder
    if not folder.is_dir():
        return None
    subdirs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(subdirs) == 1 and (subdirs[0] / "train").is_dir() and (subdirs[0] / "test").is_dir():
        return subdirs[0]
    return None


def scan_tree(root: str | Path, source: str) -> list[dict[str, Any]]:
    """Tracks of a MUSDB18 (``.stem.mp4``) or MUSDB18-HQ-shaped (wav folders) tree, split train/test."""
    root = Path(root)
    wav = SOURCES[source].layout == "wav"
    tracks: list[dict[str, Any]] = []
    for split in ("train", "test"):
        folder = root / split
        if not folder.is_dir():
            raise DataError(f"{folder}: missing; a {source} tree has train/ and test/ folders")
        if wav:
            found = [
                {"name": d.name, "split": split, "files": _stem_files(d)}
                for d in sorted(folder.iterdir())
                if d.is_dir() and not d.name.startswith(".")
            ]
        else:
            found = [
                {"name": f.name[: -len(".stem.mp4")], "split": split, "stem_file": os.path.abspath(f)}
                for f in sorted(folder.glob("*.stem.mp4"))
            ]
        if not found:
            if wav:
                stems = any(folder.glob("*.stem.mp4"))
                hint = " (it holds .stem.mp4 files: data.source=musdb18?)" if stems else ""
                raise DataError(f"{folder}: no track folders of wav stems found{hint}")
            hint = (
                " (it holds folders: wav stems, data.source=musdb18hq?)"
                if any(p.is_dir() for p in folder.iterdir())
                else ""
            )
            raise DataError(f"{folder}: no .stem.mp4 files found{hint}")
        tracks += found
    names = [t["name"] for t in tracks]
    if len(set(names)) != len(names):
        raise DataError(f"{root}: track names repeat between train/ and test/; each track must be unique")
    return tracks


def _stem_files(folder: Path) -> dict[str, str]:
    files = {stem: folder / f"{stem}.wav" for stem in STEMS}
    for path in files.values():
        if not path.is_file():
            raise DataError(f"{path}: missing; every track folder needs {', '.join(s + '.wav' for s in STEMS)}")
    return {stem: os.path.abspath(path) for stem, path in files.items()}


def assign_splits(
    tracks: list[dict[str, Any]], valid_names: list[str], origin: str = "data.valid_tracks"
) -> list[dict[str, Any]]:
    """Move the named train tracks to the ``valid`` split (musdb's convention).

    An empty list, or a name that is not a train track, is an error: validation is never skipped.
    """
    train = sorted(t["name"] for t in tracks if t["split"] == "train")
    if not valid_names:
        raise DataError(
            f"{origin}: the validation split is empty; set data.valid_tracks to a list of "
            f"train track names (null = musdb's official validation tracks)"
        )
    for name in valid_names:
        if name not in train:
            raise DataError(
                f"{origin}: {name!r} is not a train track of this data set; set "
                f"data.valid_tracks to names among: {', '.join(train[:10])}"
                f"{' ...' if len(train) > 10 else ''}"
            )
    valid = set(valid_names)
    return [dict(t, split="valid") if t["name"] in valid else dict(t) for t in tracks]


# ---------------------------------------------------------------------------------------
# dataset.json
def write_dataset(
    path: str | Path,
    source: str,
    root: str | Path,
    sha256: str | None,
    tracks: list[dict[str, Any]],
    extra_train: list[dict[str, Any]] | None = None,
) -> Path:
    """Write the track list atomically. Paths inside the stage output (generated or extracted
    data) are recorded relative to the file, so they move with DVC experiment copies; others
    (the user's data set) absolute. ``extra_train``: the records of the ``data.extra_train``
    roots (:func:`lightsaft.data.extra.scan_extra_roots`), whose tracks are among ``tracks``."""
    path = Path(path)
    base = path.parent
    payload = {
        "format": DATASET_FORMAT,
        "source": source,
        "root": portable(root, base, base),
        "sha256": sha256,
        "tracks": [_map_paths(t, lambda p: portable(p, base, base)) for t in tracks],
    }
    if extra_train:
        payload["extra_train"] = extra_train
    write_text_atomic(path, json.dumps(payload, indent=1) + "\n")
    return path


def read_dataset(path: str | Path) -> dict[str, Any]:
    """Read and check a ``dataset.json`` written by the download stage."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found; run the download stage first (dvc repro download)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e}); rerun the download stage") from None
    if not isinstance(data, dict) or data.get("format") != DATASET_FORMAT:
        raise DataError(
            f"{path}: format {data.get('format') if isinstance(data, dict) else None!r}, "
            f"expected {DATASET_FORMAT}; rerun the download stage"
        )
    for track in data.get("tracks") or [None]:
        if (
            not isinstance(track, dict)
            or track.get("split") not in SPLITS
            or not ("files" in track or "stem_file" in track)
        ):
            raise DataError(f"{path}: malformed track entry {track!r}; rerun the download stage")
    base = path.parent
    data["root"] = str(resolve(data["root"], base))
    data["tracks"] = [_map_paths(t, lambda p: str(resolve(p, base))) for t in data["tracks"]]
    return data


def _map_paths(track: dict[str, Any], convert) -> dict[str, Any]:
    """A track entry with ``convert`` applied to its file paths."""
    if "stem_file" in track:
        return dict(track, stem_file=convert(track["stem_file"]))
    return dict(track, files={stem: convert(p) for stem, p in track["files"].items()})


def source_files(track: dict[str, Any]) -> list[Path]:
    return [Path(track["stem_file"])] if "stem_file" in track else [Path(p) for p in track["files"].values()]


# ---------------------------------------------------------------------------------------
# Reading and checking audio
def track_samples(track: dict[str, Any]) -> int:
    """Length in samples from the headers (exact for wav, from the container duration for mp4)."""
    if "files" in track:
        return _wav_info(Path(track["files"]["mixture"])).frames
    duration = probe(track["stem_file"]).get("format", {}).get("duration")
    if duration is None:
        raise AudioError(f"{track['stem_file']}: the container states no duration (truncated or corrupt?); "
                         f"download the data set again")  # fmt: skip
    return round(float(duration) * SAMPLE_RATE)


def load_track(track: dict[str, Any]) -> dict[str, np.ndarray]:
    """Decode a track's mixture and stems, each float32 ``[samples, 2]`` at 44.1 kHz, checked.

    Refused, naming the file: a missing or unreadable file, a wrong sample rate, a channel count
    other than 2, non-finite samples, a truncated file, stems of unequal length. (Tracks of
    ``data.extra_train``, at any rate: :func:`lightsaft.data.extra.load_extra_track`.)
    """
    if "stem_file" in track:
        path = _existing(track["stem_file"])
        streams = probe(path)["audio"]
        if len(streams) < len(STEMS):
            raise AudioError(
                f"{path}: {len(streams)} audio streams; a MUSDB18 .stem.mp4 has 5 (mixture, drums, bass, other, vocals)"
            )
        for stream in streams[: len(STEMS)]:
            _check_format(f"{path} (stream {stream['index']})", int(stream["sample_rate"]), int(stream["channels"]))
        audio, _ = read_stems(path)
        paths = {stem: f"{path} ({stem} stream)" for stem in STEMS}
        expected = track_samples(track)
    else:
        audio, paths = {}, {}
        for stem in STEMS:
            path = Path(track["files"][stem])
            info = _wav_info(path)
            _check_format(str(path), info.samplerate, info.channels)
            audio[stem], _ = read_audio(path)
            paths[stem] = str(path)
        expected = None
    _check_lengths(audio, paths, expected)
    for stem, wave in audio.items():
        if not np.isfinite(wave).all():
            raise AudioError(f"{paths[stem]}: contains NaN or infinite samples")
    return audio


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: file not found; rerun the download stage")
    return path


def _wav_info(path: Path) -> Any:
    _existing(path)
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioError(f"{path}: cannot read audio: {e}") from None
    with open(path, "rb") as f:
        head = f.read(12)
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        declared = struct.unpack("<I", head[4:8])[0] + 8
        if declared not in (8, 0xFFFFFFFF + 8) and declared > os.path.getsize(path):
            raise AudioError(
                f"{path}: truncated (header says {declared} bytes, file has "
                f"{os.path.getsize(path)}); download the data set again"
            )
    return info


def _check_format(where: str, rate: int, channels: int) -> None:
    if rate != SAMPLE_RATE:
        raise AudioError(f"{where}: sample rate {rate} Hz; MUSDB18 stems must be {SAMPLE_RATE} Hz")
    if channels != 2:
        raise AudioError(f"{where}: {channels} channel(s); MUSDB18 stems must be stereo")


def _check_lengths(audio: dict[str, np.ndarray], paths: dict[str, str], expected: int | None) -> None:
    length = len(audio["mixture"])
    for stem in TARGETS:
        if len(audio[stem]) != length:
            raise AudioError(
                f"{paths[stem]}: {len(audio[stem])} samples but the mixture has {length}; "
                f"stems must be as long as the mixture (truncated file?)"
            )
    # AAC priming/padding makes the decoded length differ from the container duration a little.
    if expected is not None and abs(length - expected) > SAMPLE_RATE // 10:
        raise AudioError(
            f"{paths['mixture']}: decoded {length} samples but the container says about "
            f"{expected}; the file is truncated or corrupt, download it again"
        )
