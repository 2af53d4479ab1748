"""Whole-track separation: seamless chunking, target bookkeeping, the separate stage's outputs."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import TINY_MODEL, MemoryCache, SpecModel, identity, noise

from lightsaft.devices import DeviceError
from lightsaft.model.unet import build_model
from lightsaft.separation.estimates import separate_tracks
from lightsaft.separation.plans import crossfade
from lightsaft.separation.track import SeparationError, separate_track
from lightsaft.songs import song_name
from lightsaft.spectral import SAMPLE_RATE, TARGETS, edge_trim, window_samples
from lightsaft.weights.ours import load_weights

WINDOW = window_samples(TINY_MODEL["num_frame"], TINY_MODEL["hop_length"])  # 960 samples


def noisy_edges(spec, condition):
    """Garbage in the two first and last frames: the part of a window separation must drop."""
    out = spec.clone()
    out[:, :, :2] = torch.randn_like(out[:, :, :2]) * 10
    out[:, :, -2:] = torch.randn_like(out[:, :, -2:]) * 10
    return out


@pytest.mark.parametrize("kept,overlap", [(576, 0.0), (576, 0.5), (576, 0.25), (576, 0.9), (119808, 0.5)])
def test_crossfade_copies_sum_to_one(kept, overlap):
    fade, step = crossfade(kept, overlap)
    assert len(fade) == kept and step == kept - round(overlap * kept)
    assert fade.min() >= 0 and fade.max() <= 1 + 1e-12
    total = np.zeros(step * 12 + kept)
    for i in range(12):
        total[i * step : i * step + kept] += fade
    np.testing.assert_allclose(total[kept - step : 12 * step], 1.0, atol=1e-12)


@pytest.mark.parametrize("length", [1, 300, WINDOW, WINDOW + 1, 3 * WINDOW - 7, 20000])
@pytest.mark.parametrize("overlap", [0.0, 0.5, 0.9])
def test_identity_model_reconstructs_input(length, overlap):
    mixture = noise(length)
    estimates = separate_track(SpecModel(identity), mixture, overlap=overlap, batch_size=3, device="cpu")
    assert set(estimates) == set(TARGETS)
    for estimate in estimates.values():
        assert estimate.dtype == np.float32 and estimate.shape == mixture.shape
        np.testing.assert_allclose(estimate, mixture, atol=1e-4)


def test_window_edges_are_dropped():
    """Noise in each window's outer frames must not reach the output (the official edge trim)."""
    model = SpecModel(noisy_edges)
    window = torch.as_tensor(noise(WINDOW, seed=1))[None]
    assert (model.front.istft(model(model.front.stft(window), None), WINDOW) - window).abs().max() > 1
    assert edge_trim(TINY_MODEL["hop_length"], TINY_MODEL["num_frame"]) == 3 * TINY_MODEL["hop_length"]
    mixture = noise(5000, seed=2)
    estimate = separate_track(model, mixture, targets=["bass"], overlap=0.5, device="cpu")["bass"]
    np.testing.assert_allclose(estimate, mixture, atol=1e-4)


def test_each_target_gets_its_own_condition():
    """Batches mix chunks and targets; every estimate must come from its own condition."""
    model = SpecModel(lambda spec, condition: spec * (condition + 1)[:, None, None, None])
    mixture = noise(4000)
    estimates = separate_track(model, mixture, targets=["other", "vocals", "bass"], batch_size=5, device="cpu")
    assert list(estimates) == ["other", "vocals", "bass"]
    for target, estimate in estimates.items():
        np.testing.assert_allclose(estimate, mixture * (TARGETS.index(target) + 1), atol=1e-4)


def test_real_model_is_batch_size_invariant():
    torch.manual_seed(0)
    model = build_model(TINY_MODEL)
    mixture = noise(3000)
    one = separate_track(model, mixture, batch_size=1, device="cpu")
    many = separate_track(model, mixture, batch_size=7, device="cpu")
    assert not model.training
    for target in TARGETS:
        np.testing.assert_allclose(many[target], one[target], atol=1e-5)
    assert np.abs(one["vocals"] - one["bass"]).max() > 1e-4  # the condition changes the output


def test_mono_array_is_refused():
    with pytest.raises(SeparationError, match=r"stereo mixture.*\(100, 1\)"):
        separate_track(SpecModel(identity), noise(100)[:, :1])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_gpu_is_an_error():
    with pytest.raises(DeviceError, match="CUDA is not available"):
        separate_track(SpecModel(identity), noise(100), device="cuda")


def test_song_name():
    assert song_name("a/b/Song - Name.stem.mp4") == "Song - Name"
    assert song_name("x.wav") == "x" and song_name("y.flac") == "y" and song_name("README") == "README"


# ---------------------------------------------------------------------------------------
def test_stage_writes_musdb_estimates_layout(tmp_path, weights):
    cache = MemoryCache(
        {"Artist - Song": {"mixture": noise(2500, seed=1)}, "Other Band - B": {"mixture": noise(1200, seed=2)}}
    )
    out = separate_tracks(weights, cache, tmp_path / "results" / "estimates", overlap=0.5, batch_size=4)
    assert sorted(p.name for p in (out / "test").iterdir()) == ["Artist - Song", "Other Band - B"]
    model = build_model(TINY_MODEL)
    model.load_state_dict(torch.load(weights, weights_only=True)["state_dict"])
    for track, audio in cache.audio.items():
        expected = separate_track(model, audio["mixture"], device="cpu")
        assert sorted(p.name for p in (out / "test" / track).iterdir()) == sorted(f"{t}.wav" for t in TARGETS)
        for target in TARGETS:
            written, rate = sf.read(out / "test" / track / f"{target}.wav", dtype="float32")
            assert rate == SAMPLE_RATE
            np.testing.assert_allclose(written, expected[target], atol=1e-6)
    assert [p.name for p in (tmp_path / "results").iterdir()] == ["estimates"]  # no temp folder left


def test_killed_stage_leaves_previous_output_untouched(tmp_path, weights):
    out = tmp_path / "estimates"
    (out / "test" / "old").mkdir(parents=True)
    cache = MemoryCache({"a": {"mixture": noise(1000)}, "b": {"mixture": noise(1000)}}, fail="b")
    with pytest.raises(OSError, match="b: cannot read"):
        separate_tracks(weights, cache, out, batch_size=4, device="cpu")
    assert [p.name for p in tmp_path.iterdir() if p.name != "weights.pt"] == ["estimates"]
    assert [p.name for p in (out / "test").iterdir()] == ["old"]


def test_stage_names_missing_weights(tmp_path):
    with pytest.raises(SeparationError, match="nope.pt: weights file not found"):
        separate_tracks(tmp_path / "nope.pt", MemoryCache({}), tmp_path / "out", device="cpu")


def test_auto_batch_fits_a_share_of_the_free_memory(monkeypatch):
    """``auto`` (the stage's and the CLI's default): as many pairs as a quarter of the free RAM holds
    on the CPU, half the free GPU memory on CUDA, between 1 and the device's MAX_AUTO_BATCH."""
    import types

    import psutil

    from lightsaft.config import defaults
    from lightsaft.separation.track import MAX_AUTO_BATCH, auto_batch_size, item_bytes

    seed = defaults()["model"]
    assert 350e6 < item_bytes(seed) < 450e6  # measured: 380 MB per item at the seed config
    free = {"available": 0}
    monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(**free))
    free["available"] = 8 * item_bytes(seed)
    assert auto_batch_size(seed, torch.device("cpu")) == 2
    free["available"] = 1
    assert auto_batch_size(seed, torch.device("cpu")) == 1
    free["available"] = 10**15
    assert auto_batch_size(TINY_MODEL, torch.device("cpu")) == MAX_AUTO_BATCH["cpu"] == 8
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (6 * item_bytes(seed), 10**11))
    assert auto_batch_size(seed, torch.device("cuda", 1)) == 3
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (10**15, 10**15))
    assert auto_batch_size(TINY_MODEL, torch.device("cuda", 0)) == MAX_AUTO_BATCH["cuda"] == 64


def test_auto_batch_gives_the_same_estimates(weights):
    model = load_weights(weights)
    mixture = noise(3000, seed=4)
    auto = separate_track(model, mixture, device="cpu")
    one = separate_track(model, mixture, batch_size=1, device="cpu")
    for target in auto:
        np.testing.assert_allclose(auto[target], one[target], atol=1e-5)
