"""``data.extra_train``: your own stems join the training split (resampled once, mono duplicated),
are part of the data's identity, and are refused when unusable or changed since download."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import dataset_json, make_project, mlflow_runs, tiny_params, train_into

from lightsaft.data.audio import resample
from lightsaft.data.cache import Cache
from lightsaft.data.datasets import TrainDataset, epoch_length
from lightsaft.data.extra import check_extra_roots, extra_samples, load_extra_track, scan_extra_roots
from lightsaft.download import download
from lightsaft.errors import ConfigError, DataError
from lightsaft.prepare import prepare
from lightsaft.spectral import TARGETS, window_samples
from lightsaft.tracking.store import dataset_of, extra_datasets_of
from lightsaft.train import train

SYNTHETIC = {"train_tracks": 1, "valid_tracks": 1, "test_tracks": 1, "seconds": 1.0, "seed": 2}
N_FFT, HOP = 256, 64
BIN = 10  # a tone at exactly this STFT bin at 44.1 kHz
TONE = BIN * 44100 / N_FFT  # 1722.66 Hz


def stems(rate: int, seconds: float, channels: int, seed: int) -> dict[str, np.ndarray]:
    """Vocals: a tone at TONE Hz; the others quiet noise."""
    n, rng = int(rate * seconds), np.random.default_rng(seed)
    tone = 0.5 * np.sin(2 * np.pi * TONE * np.arange(n) / rate)
    audio = {"vocals": np.repeat(tone[:, None], channels, axis=1)}
    for stem in TARGETS[1:]:
        audio[stem] = 0.05 * rng.standard_normal((n, channels))
    return {k: v.astype(np.float32) for k, v in audio.items()}


def write_track(folder, audio: dict[str, np.ndarray], rate: int, suffix: str, mixture: bool = False) -> None:
    folder.mkdir(parents=True)
    for stem, wave in audio.items():
        sf.write(folder / f"{stem}{suffix}", wave, rate, subtype="FLOAT" if suffix == ".wav" else "PCM_24")
    if mixture:
        sf.write(folder / f"mixture{suffix}", sum(audio.values()), rate, subtype="PCM_24")


@pytest.fixture
def own_stems(tmp_path):
    """A root of two tracks: mono float wav at 22.05 kHz without a mixture; stereo flac at 48 kHz with one."""
    root = tmp_path / "stems"
    write_track(root / "song-a", stems(22050, 1.0, 1, 0), 22050, ".wav")
    write_track(root / "song-b", stems(48000, 0.5, 2, 1), 48000, ".flac", mixture=True)
    (root / "notes.txt").write_text("not a track")
    return root


@pytest.fixture
def project(tmp_path, monkeypatch):
    root = make_project(tmp_path / "project")
    monkeypatch.setenv("DVC_ROOT", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return root


def download_and_prepare(project, roots) -> Cache:
    raw = dataset_json(project / "data", source="synthetic", synthetic=SYNTHETIC, extra_train=[str(r) for r in roots])
    return Cache(prepare(raw, project / "data" / "cache", N_FFT, HOP))


def test_own_stems_join_the_training_split_resampled_and_counted(project, own_stems):
    cache = download_and_prepare(project, [own_stems])
    dataset = json.loads((project / "data" / "raw" / "dataset.json").read_text())
    extra = [t for t in dataset["tracks"] if "extra" in t]
    assert [(t["name"], t["split"], t["rate"]) for t in extra] == [("stems/song-a", "train", 22050),
                                                                   ("stems/song-b", "train", 48000)]  # fmt: skip
    assert "mixture" not in extra[0]["files"] and extra[1]["files"]["mixture"].endswith("mixture.flac")
    assert cache.tracks("train") == ["synthetic train 000", "stems/song-a", "stems/song-b"]
    assert cache.tracks("valid") == ["synthetic valid 000"] and cache.tracks("test") == [
        "synthetic test 000"
    ]  # MUSDB's (here synthetic)

    # resampled once to 44.1 kHz: 1 s at 22.05 kHz is 44100 samples, and the tone lands in its bin
    assert cache.samples("stems/song-a") == 44100 and cache.samples("stems/song-b") == 22050
    spec = np.asarray(cache.spec("stems/song-a"), dtype=np.float32)  # [target, channel, frame, bin]
    magnitude = np.hypot(spec[0, :2], spec[0, 2:])  # vocals, [L/R, frame, bin]
    middle = magnitude[:, 5:-5].mean(axis=1)
    assert (middle.argmax(axis=1) == BIN).all() and (middle[:, BIN] > 100 * np.median(middle)).all()
    np.testing.assert_array_equal(spec[:, 0], spec[:, 1])  # mono duplicated: left == right (Re)
    np.testing.assert_array_equal(spec[:, 2], spec[:, 3])  # (Im)

    # the epoch counts them (the official length: 4 items per whole window of every train track)
    window = window_samples(16, HOP)
    samples = [cache.samples(name) for name in cache.tracks("train")]
    assert len(TrainDataset(cache, 16)) == epoch_length(samples, window) == 4 * sum(s // window for s in samples)
    assert epoch_length(samples, window) > epoch_length(samples[:1], window)

    # each root: part of the data's identity and of the MLflow datasets
    assert cache.manifest["extra_train"] == [{"root": str(own_stems), "tracks": 2}]
    assert json.loads(dataset_of(cache).profile)["extra_train"] == cache.manifest["extra_train"]
    assert json.loads(dataset_of(cache).source)["uri"] != "/"  # located at the data set, not the roots' common parent
    [own] = extra_datasets_of(cache)
    assert own.name == "extra_train:stems" and json.loads(own.source)["uri"] == str(own_stems)
    digest = own.digest
    song = next(t for t in cache.manifest["tracks"] if t["name"] == "stems/song-b")
    song["sources"][0]["sha256"] = "0" * 64  # another file content: another digest
    assert extra_datasets_of(cache)[0].digest != digest


@pytest.mark.slow  # trains
def test_training_on_own_stems_records_each_root(project, own_stems):
    cache = download_and_prepare(project, [own_stems])
    params = tiny_params(
        **{
            "train.items_per_epoch": None,  # the official epoch, own stems counted
            "train.valid_chunks_per_track": 1,
            "trainer.max_steps": 2,
            "trainer.limit_val_batches": 1,
            "mlflow.experiment": "own-stems",
        }
    )
    assert train_into(project, params, cache.path)["steps"] == 2
    [run] = mlflow_runs(project, "own-stems")
    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"synthetic", "extra_train:stems"}
    assert {t.value for i in inputs.values() for t in i.tags} == {"training"}
    assert json.loads(inputs["extra_train:stems"].dataset.source)["uri"] == str(own_stems)
    assert run.data.tags["data_manifest_sha256"] == cache.digest()
    assert run.data.params["data.extra_train"] == str([str(own_stems)])


@pytest.mark.parametrize(
    "spoil, named, why",
    [
        (lambda r: (r / "song-b" / "bass.flac").unlink(), "song-b/bass.wav", "missing (nor bass.flac)"),
        (lambda r: (r / "song-a" / "drums.wav").write_bytes(b"RIFF\0\0\0\0WAVEnot audio"), "song-a/drums.wav",
         "cannot be decoded"),
        (lambda r: sf.write(r / "song-a" / "other.wav", np.zeros((22000, 1)), 22050), "song-a/other.wav",
         "22000 samples, but vocals.wav has 22050; the stems of a track must be equally long"),
        (lambda r: sf.write(r / "song-a" / "bass.wav", np.zeros((22050, 1)), 44100), "song-a/bass.wav",
         "44100 Hz, but vocals.wav is 22050 Hz"),
        (lambda r: sf.write(r / "song-a" / "bass.flac", np.zeros((22050, 1)), 22050), "song-a",
         "both bass.wav and bass.flac; keep one of them"),
    ],
)  # fmt: skip
def test_an_unusable_track_stops_download_naming_the_path(tmp_path, own_stems, spoil, named, why):
    spoil(own_stems)
    out = tmp_path / "raw"
    params = dict(tiny_params()["data"], synthetic=SYNTHETIC, extra_train=[str(own_stems)])
    with pytest.raises(DataError) as error:
        download(params, out)
    message = str(error.value)
    assert str(own_stems / named) in message and why in message, message
    assert not out.exists()  # nothing written, not even the synthetic set


def test_train_refuses_a_root_that_changed_since_download(project, own_stems):
    cache = download_and_prepare(project, [own_stems])
    check_extra_roots(cache)  # as download listed it
    params = tiny_params(**{"mlflow.experiment": "changed"})
    vocals = own_stems / "song-a" / "vocals.wav"
    stat = vocals.stat()
    os.utime(vocals, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # rewritten, same size
    changed = r"song-a/vocals.wav was modified \(its mtime changed\) since download listed it; "
    with pytest.raises(DataError, match=changed + r".* rerun download \(dvc repro -f download\), then dvc repro"):
        train(params, cache.path)
    os.utime(vocals, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    check_extra_roots(cache)
    write_track(own_stems / "song-c", stems(22050, 0.5, 1, 3), 22050, ".wav")
    with pytest.raises(DataError, match="song-c/bass.wav was added"):
        check_extra_roots(cache)
    for path in (own_stems / "song-c").iterdir():
        path.unlink()
    (own_stems / "song-c").rmdir()
    (own_stems / "song-b" / "mixture.flac").unlink()
    with pytest.raises(DataError, match="song-b/mixture.flac was removed"):
        check_extra_roots(cache)
    assert not (project / "mlflow.db").exists()


def test_a_root_listed_twice_or_missing_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="data.extra_train = .*: lists a folder twice"):
        tiny_params(**{"data.extra_train": ["a", "a"]})
    with pytest.raises(DataError, match="nowhere.* is not a folder"):
        scan_extra_roots([str(tmp_path / "nowhere")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no track folders"):
        scan_extra_roots([str(tmp_path / "empty")])


def test_loading_is_the_resampled_stereo_and_the_mixture_the_sum(own_stems):
    tracks, _ = scan_extra_roots([str(own_stems)])
    audio = load_extra_track(tracks[0])  # song-a: mono 22.05 kHz, no mixture
    assert all(wave.shape == (44100, 2) and wave.dtype == np.float32 for wave in audio.values())
    assert extra_samples(tracks[0]) == 44100
    np.testing.assert_allclose(audio["mixture"], sum(audio[s] for s in TARGETS), atol=1e-6)
    written = sf.read(own_stems / "song-a" / "vocals.wav", dtype="float32")[0]
    np.testing.assert_array_equal(audio["vocals"][:, 0], resample(written[:, None], 22050, 44100)[:, 0])
    torch.testing.assert_close(torch.from_numpy(audio["vocals"][:, 0]), torch.from_numpy(audio["vocals"][:, 1]))
