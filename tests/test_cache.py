"""The spectrogram cache: content, manifest, atomic writes, disk check, refusing a mismatched cache.

The caches (small_dataset, small_cache, real_cache) are session fixtures in conftest.py.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections import namedtuple

import numpy as np
import pytest
import soundfile as sf
from helpers import FALCON, ROCK, SYNTHETIC, dataset_json, run_stage_in_process, shared_path, stft

from lightsaft import prepare as cache_module
from lightsaft.data.audio import read_stems
from lightsaft.data.cache import Cache
from lightsaft.data.tracks import STEMS, read_dataset
from lightsaft.errors import DataError
from lightsaft.prepare import prepare
from lightsaft.spectral import TARGETS


def _wav_track(dataset_json, name: str) -> dict[str, np.ndarray]:
    dataset = read_dataset(dataset_json)
    files = next(t["files"] for t in dataset["tracks"] if t["name"] == name)
    return {stem: sf.read(files[stem], dtype="float32")[0] for stem in STEMS}


@pytest.mark.parametrize("dtype,tolerance", [("float16", 2**-10), ("float32", 1e-6)])
def test_spec_is_the_stft_of_each_stem(small_dataset, tmp_path, dtype, tolerance):
    cache = Cache(prepare(small_dataset, tmp_path / "cache", 256, 64, dtype), 256, 64, dtype)
    assert cache.tracks("train") == ["synthetic train 000", "synthetic train 001", "synthetic train 002"]
    for name in cache.tracks("train"):
        spec, audio = cache.spec(name), _wav_track(small_dataset, name)
        assert isinstance(spec, np.memmap) and not spec.flags.writeable
        assert spec.dtype == np.dtype(dtype) and spec.shape == (4, 4, 44100 // 64 + 1, 129)
        assert cache.frames(name) == spec.shape[2] and cache.samples(name) == 44100
        for k, target in enumerate(TARGETS):
            ref = stft(audio[target], 256, 64)
            assert np.abs(spec[k] - ref).max() <= tolerance * np.abs(ref).max()


def test_manifest_records_params_and_sources(small_cache):
    m = small_cache.manifest
    assert [m[key] for key in ("format", "n_fft", "hop_length", "dtype", "sample_rate")] == [
        1,
        256,
        64,
        "float16",
        44100,
    ]
    assert [(t["name"], t["split"]) for t in m["tracks"]][-2:] == [
        ("synthetic valid 000", "valid"),
        ("synthetic test 000", "test"),
    ]
    for source in m["tracks"][0]["sources"]:
        with open(small_cache.resolve(source["path"]), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == source["sha256"]


def test_load_audio_of_wav_tracks(small_dataset, small_cache):
    for name in small_cache.tracks("valid") + small_cache.tracks("test"):
        audio, files = small_cache.load_audio(name), _wav_track(small_dataset, name)
        assert sorted(audio) == sorted(STEMS)
        for stem in STEMS:
            assert audio[stem].dtype == np.float32 and audio[stem].shape == (44100, 2)
            np.testing.assert_array_equal(audio[stem], files[stem])
        window = small_cache.load_audio(name, 1000, 3000, stems=("drums",))
        np.testing.assert_array_equal(window["drums"], files["drums"][1000:3000])
    with pytest.raises(DataError, match="train track; waveforms are kept for valid and test"):
        small_cache.load_audio("synthetic train 000")
    with pytest.raises(DataError, match="a valid track; spectrograms are cached for train tracks only"):
        small_cache.spec("synthetic valid 000")


def test_changed_source_file_is_detected(tmp_path):
    dataset = dataset_json(tmp_path, source="synthetic", synthetic=SYNTHETIC)
    cache = Cache(prepare(dataset, tmp_path / "cache", 256, 64))
    path = cache.resolve(cache.track("synthetic test 000")["files"]["vocals"])
    sf.write(path, np.zeros((100, 2)), 44100)
    with pytest.raises(DataError, match="vocals.wav: missing or changed since the cache was prepared"):
        cache.load_audio("synthetic test 000")


def test_mismatched_cache_is_refused(small_cache, tmp_path):
    for key, value in (("n_fft", 4096), ("hop_length", 1024), ("dtype", "float32")):
        with pytest.raises(DataError, match=f"built with {key} = .* but {value!r} is needed; rerun"):
            Cache(small_cache.path, **{key: value})
    copy = shutil.copytree(small_cache.path, tmp_path / "old")
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "format": 0}))
    with pytest.raises(DataError, match="built with format = 0 but 1 is needed"):
        Cache(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(DataError, match="not a prepared cache"):
        Cache(copy)


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def test_interrupted_prepare_keeps_the_previous_cache_and_resumes(small_dataset, tmp_path, monkeypatch):
    """Interrupted: the old cache stays whole; the next run reuses the tracks already finished."""
    out = prepare(small_dataset, tmp_path / "cache", 256, 64)
    calls, interrupted = [], []

    def failing_load(track):
        calls.append(track["name"])
        if len(calls) == 3 and not interrupted:
            interrupted.append(track["name"])
            raise KeyboardInterrupt
        return real_load(track)

    real_load = cache_module.load_track
    monkeypatch.setattr(cache_module, "load_track", failing_load)
    with pytest.raises(KeyboardInterrupt):
        prepare(small_dataset, out, 512, 128, jobs=1)
    assert _leftovers(tmp_path) == [".cache.tmp", "cache"]  # the partial one is hidden, never the output
    assert Cache(out, n_fft=256, hop_length=64).manifest["n_fft"] == 256
    calls.clear()
    prepare(small_dataset, out, 512, 128, jobs=1)
    assert len(calls) == len(read_dataset(small_dataset)["tracks"]) - 2  # two were finished before
    assert _leftovers(tmp_path) == ["cache"]
    fresh = prepare(small_dataset, tmp_path / "fresh", 512, 128, jobs=1)
    resumed_manifest = json.loads((out / "manifest.json").read_text())
    fresh_manifest = json.loads((fresh / "manifest.json").read_text())
    assert resumed_manifest["tracks"] == fresh_manifest["tracks"]
    for entry in fresh_manifest["tracks"]:
        if "spec" in entry:
            np.testing.assert_array_equal(np.load(out / entry["spec"]), np.load(fresh / entry["spec"]))


@pytest.mark.slow  # two spawned worker processes, each importing torch
def test_tracks_are_prepared_in_parallel_workers(small_dataset, tmp_path):
    """Two worker processes give the same cache as one."""
    one = prepare(small_dataset, tmp_path / "one", 256, 64, jobs=1)
    two = prepare(small_dataset, tmp_path / "two", 256, 64, jobs=2)
    assert (
        json.loads((one / "manifest.json").read_text())["tracks"]
        == json.loads((two / "manifest.json").read_text())["tracks"]
    )
    for path in sorted(one.rglob("*.npy")):
        np.testing.assert_array_equal(np.load(path), np.load(two / path.relative_to(one)))


def test_only_the_test_tracks_for_a_pretrained_model(small_dataset, tmp_path):
    cache = Cache(prepare(small_dataset, tmp_path / "cache", 256, 64, splits=("test",)))
    assert cache.tracks("test") == ["synthetic test 000"] and not (tmp_path / "cache" / "spec").exists()
    with pytest.raises(DataError, match="prepared without its train tracks"):
        cache.tracks("train")


def test_disk_space_is_checked_before_writing(small_dataset, tmp_path, monkeypatch, capsys):
    out = prepare(small_dataset, tmp_path / "cache", 256, 64)
    expected_mb = float(re.search(r"needs about ([\d,.]+) MB", capsys.readouterr().out)[1].replace(",", ""))
    actual_mb = sum(p.stat().st_size for p in out.rglob("*.npy")) / 1e6
    assert abs(expected_mb - actual_mb) < 0.01 * actual_mb + 0.1

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(cache_module.shutil, "disk_usage", lambda path: usage(10**9, 10**9, 10**6))
    with pytest.raises(DataError, match=r"needs about 0.0\d GB but only 0.00 GB are free"):
        prepare(small_dataset, tmp_path / "second", 256, 64)
    assert _leftovers(tmp_path) == ["cache"]


def test_stem_sources_keep_their_decoded_audio(real_cache):
    assert (real_cache.tracks("train"), real_cache.tracks("valid"), real_cache.tracks("test")) == (
        [ROCK],
        [f"{ROCK} (valid)"],
        [FALCON],
    )
    decoded, _ = read_stems(shared_path("musdb", "musdb18-7", "test", f"{FALCON}.stem.mp4"))
    audio = real_cache.load_audio(FALCON)
    for stem in STEMS:
        np.testing.assert_array_equal(audio[stem], decoded[stem])
    spec = real_cache.spec(ROCK)
    assert spec.shape == (4, 4, real_cache.samples(ROCK) // 1024 + 1, 2049) and spec.dtype == np.float16


def test_prepare_stage_script(small_dataset, tmp_path):
    """In a project whose download stage has run: data/raw -> data/cache, as dvc.yaml runs it."""
    shutil.copytree(small_dataset.parent, tmp_path / "data" / "raw")
    (tmp_path / "params.yaml").write_text(
        "model: {n_fft: 256, hop_length: 64, num_frame: 16, n_blocks: 5}\nprepare: {dtype: float32}\n"
        "runtime: {prepare: {jobs: 1}}\n"  # in this process (workers: test_tracks_are_prepared_in_parallel_workers)
    )
    run_stage_in_process(tmp_path, "prepare")
    assert Cache(tmp_path / "data" / "cache", 256, 64, "float32").tracks("test") == ["synthetic test 000"]
