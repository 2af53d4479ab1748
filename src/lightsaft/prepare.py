"""The ``prepare`` stage: decode every track once into the spectrogram cache (layout: :mod:`lightsaft.data.cache`).

Tracks are independent, so ``jobs`` worker processes prepare them side by side. The cache is
written into ``.<name>.tmp`` beside its place and renamed into it when complete, so it is whole
or absent; a stage that was interrupted keeps the tracks it had finished there, and the next run
with the same data and settings continues from them instead of starting over.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from concurrent.futures import as_completed
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data.cache import CACHE_FORMAT, SPEC_LAYOUT
from .data.extra import RECORD as EXTRA_RECORD
from .data.extra import extra_samples, load_extra_track
from .data.tracks import SPLITS, STEMS, load_track, read_dataset, source_files, track_samples
from .errors import DataError
from .paths import file_sha256, portable, write_text_atomic
from .progress import Progress
from .spectral import SAMPLE_RATE, TARGETS, SpectralFrontEnd, num_frames
from .workers import cores, running

FLOAT16_MAX = 65504.0
JOB_MEMORY = 4e9  # bytes one job may need: a 10-minute track decoded (5 stems) plus one stem's STFT


def default_jobs(tracks: int) -> int:
    """``runtime.prepare.jobs: auto``: one job per core, as many as the available memory holds."""
    import psutil

    return max(1, min(cores(), int(psutil.virtual_memory().available // JOB_MEMORY), tracks))


def cache_bytes(track: dict[str, Any], samples: int, n_fft: int, hop_length: int, dtype: str) -> int:
    """Bytes a track adds to the cache: train spectrograms, the decoded audio of stem.mp4 tracks."""
    if track["split"] == "train":
        return len(TARGETS) * 4 * num_frames(samples, hop_length) * (n_fft // 2 + 1) * np.dtype(dtype).itemsize
    return len(STEMS) * samples * 2 * 4 if "stem_file" in track else 0


def prepare(
    dataset_json: str | Path,
    out_dir: str | Path,
    n_fft: int,
    hop_length: int,
    dtype: str = "float16",
    splits: Sequence[str] = SPLITS,
    jobs: int | str = 1,
) -> Path:
    """Write the cache of the ``splits`` tracks of ``dataset.json`` to ``out_dir``; returns ``out_dir``.

    ``splits``: the tracks the stages that will run need (evaluating a pretrained model needs only
    ``test``). ``jobs``: worker processes, or ``auto`` (:func:`default_jobs`).
    """
    if dtype not in ("float16", "float32"):
        raise DataError(f"prepare.dtype = {dtype!r}: use float16 or float32")
    dataset, out_dir = read_dataset(dataset_json), Path(out_dir)
    tracks = [t for t in dataset["tracks"] if t["split"] in splits]
    jobs = default_jobs(len(tracks)) if jobs == "auto" else max(1, min(int(jobs), len(tracks) or 1))
    lengths = [extra_samples(t) if "extra" in t else track_samples(t) for t in tracks]  # extra: data.extra_train
    sizes = [cache_bytes(t, n, n_fft, hop_length, dtype) for t, n in zip(tracks, lengths)]
    _check_space(out_dir, sum(sizes), dtype)
    counts = ", ".join(f"{sum(t['split'] == s for t in tracks)} {s}" for s in splits)
    print(
        f"prepare: {counts} tracks ({sum(lengths) / SAMPLE_RATE / 3600:.2f} h of audio) -> {out_dir} needs about "
        f"{sum(sizes) / 1e6:,.1f} MB; {jobs} job{'s' if jobs > 1 else ''}"
    )
    settings = {
        "format": CACHE_FORMAT,
        "n_fft": n_fft,
        "hop_length": hop_length,
        "dtype": dtype,
        "splits": list(splits),
        "dataset": hashlib.sha256(Path(dataset_json).read_bytes()).hexdigest(),
    }
    tmp = _work_dir(out_dir, settings)
    raw_dir = Path(dataset_json).parent  # the download stage's output: moves with a DVC copy
    entries = _prepare_all(list(enumerate(tracks)), tmp, out_dir, raw_dir, settings, jobs)
    manifest = {
        "format": CACHE_FORMAT, "source": dataset["source"], "dataset_sha256": dataset["sha256"],
        "sample_rate": SAMPLE_RATE, "n_fft": n_fft, "hop_length": hop_length, "dtype": dtype,
        "splits": list(splits), "spec_layout": SPEC_LAYOUT, "stems": list(STEMS), "file_hash": "sha256",
        "tracks": [entries[i] for i in range(len(tracks))],
    }  # fmt: skip
    extra = dataset.get("extra_train", []) if "train" in splits else []
    if extra:  # data.extra_train: each root in the digest; what download listed, for train to compare
        manifest["extra_train"] = [{"root": r["root"], "tracks": r["tracks"]} for r in extra]
        (tmp / EXTRA_RECORD).write_text(json.dumps(extra, indent=1) + "\n")
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    shutil.rmtree(tmp / "done")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def _check_space(out_dir: Path, need: int, dtype: str) -> None:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out_dir.parent).free
    if need * 1.02 + 1e7 > free:
        raise DataError(
            f"{out_dir}: the cache needs about {need / 1e9:.2f} GB but only {free / 1e9:.2f} GB "
            f"are free on that disk; free some space"
            f"{' or use prepare.dtype=float16 (half the size)' if dtype == 'float32' else ''}"
        )


def _work_dir(out_dir: Path, settings: dict[str, Any]) -> Path:
    """The temporary folder beside ``out_dir``: kept from an interrupted run with the same settings
    (its finished tracks are reused), else new."""
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    record = tmp / "settings.json"
    if not (record.is_file() and json.loads(record.read_text()) == settings):
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "done").mkdir(parents=True)
        record.write_text(json.dumps(settings))
    return tmp


def _prepare_all(
    tracks: list[tuple[int, dict]], tmp: Path, out_dir: Path, raw_dir: Path, settings: dict, jobs: int
) -> dict[int, dict[str, Any]]:
    """Each track's manifest entry, from the finished ones of an interrupted run or prepared now."""
    entries = {}
    for index, _ in tracks:
        done = tmp / "done" / f"{index:04d}.json"
        if done.is_file():
            entries[index] = json.loads(done.read_text())
    todo = [(i, t) for i, t in tracks if i not in entries]
    if entries:
        print(f"prepare: {len(entries)} tracks were finished by an interrupted run; preparing the other {len(todo)}")
    args = (tmp, out_dir, raw_dir, settings["n_fft"], settings["hop_length"], settings["dtype"])
    written = 0
    with Progress("prepare", len(todo), "track") as bar:
        for entry in _prepared(todo, args, jobs):
            entries[entry["index"]] = entry
            written += sum((tmp / entry[k]).stat().st_size for k in ("spec", "audio") if k in entry)
            bar.advance(entry["name"], f"{written / 1e9:.2f} GB written")
    return entries


def _prepared(todo: list[tuple[int, dict]], args: tuple, jobs: int) -> Iterator[dict[str, Any]]:
    """The entries of ``todo``'s tracks as they finish, prepared here or in ``jobs`` workers."""
    if jobs == 1 or len(todo) < 2:
        yield from (prepare_track(i, t, *args) for i, t in todo)
        return
    with running(jobs) as workers:
        for future in as_completed([workers.submit(prepare_track, i, t, *args) for i, t in todo]):
            yield future.result()


def prepare_track(
    index: int, track: dict[str, Any], tmp: Path, out_dir: Path, raw_dir: Path, n_fft: int, hop_length: int, dtype: str
) -> dict[str, Any]:
    """Decode one track and write its files into ``tmp``; its entry is recorded last (``done/``)."""
    audio = load_extra_track(track) if "extra" in track else load_track(track)
    samples = len(audio["mixture"])
    entry: dict[str, Any] = {
        "index": index,
        "name": track["name"],
        "split": track["split"],
        "samples": samples,
        "frames": num_frames(samples, hop_length),
        "sources": [
            {"path": portable(p, out_dir, raw_dir), "size": p.stat().st_size, "sha256": file_sha256(p)}
            for p in source_files(track)
        ],
        **({"extra": track["extra"]} if "extra" in track else {}),  # which data.extra_train root
    }
    if track["split"] == "train":
        entry["spec"] = f"spec/{index:04d}.npy"
        write_spec(tmp / entry["spec"], audio, SpectralFrontEnd(n_fft, hop_length), dtype, track["name"])
    elif "stem_file" in track:
        entry["audio"] = f"audio/{index:04d}.npy"
        _save(tmp / entry["audio"], np.stack([audio[stem] for stem in STEMS]).astype(np.float32))
    else:
        entry["files"] = {stem: portable(p, out_dir, raw_dir) for stem, p in track["files"].items()}
    write_text_atomic(tmp / "done" / f"{index:04d}.json", json.dumps(entry))
    return entry


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(exist_ok=True)
    partial = path.with_name(path.name + ".part")
    with open(partial, "wb") as f:
        np.save(f, array)
    os.replace(partial, path)


def write_spec(path: Path, audio: dict[str, np.ndarray], front: SpectralFrontEnd, dtype: str, name: str) -> None:
    """``[target, channel, frame, bin]`` spectrograms of the four stems, memory-mapped while written."""
    path.parent.mkdir(exist_ok=True)
    frames, bins = num_frames(len(audio["mixture"]), front.hop_length), front.n_fft // 2 + 1
    partial = path.with_name(path.name + ".part")
    out = np.lib.format.open_memmap(partial, mode="w+", dtype=dtype, shape=(len(TARGETS), 4, frames, bins))
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
    os.replace(partial, path)
