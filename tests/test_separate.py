"""Whole-track separation: seamless chunking, target bookkeeping, the separate stage's outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import FALCON, TINY_MODEL, MemoryCache, SpecModel, identity, noise, require_ffmpeg, shared_path

from lightsaft.data.stream import ArraySource
from lightsaft.devices import DeviceError
from lightsaft.model.unet import build_model
from lightsaft.separation import estimates
from lightsaft.separation.estimates import separate_tracks
from lightsaft.separation.plans import crossfade, plan_chunks
from lightsaft.separation.track import SeparationError, separate_stream, separate_track
from lightsaft.separation.writer import AudioWriter
from lightsaft.songs import song_name
from lightsaft.spectral import SAMPLE_RATE, TARGETS, edge_trim, window_samples
from lightsaft.weights.ours import load_weights

PCM16 = 1.5 / 32768  # a 16-bit file's rounding, as libsndfile writes (x 32767) and reads (/ 32768)

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


def whole_track(model, mixture: np.ndarray, targets, protocol: str, overlap: float, min_trim: int) -> np.ndarray:
    """The whole-track algorithm, written out: the zero-padded track in one buffer, each window
    through the model one target at a time, weighted and added into a buffer as long as the track."""
    plan, window = plan_chunks(model.params, len(mixture), protocol, overlap, min_trim)
    lead = max(0, -plan[0].start)
    size = lead + max(len(mixture), plan[-1].start + window)
    padded = torch.zeros(size, 2)
    padded[lead : lead + len(mixture)] = torch.as_tensor(mixture)
    out = torch.zeros(len(targets), size, 2)
    with torch.inference_mode():
        for chunk in plan:
            at = lead + chunk.start
            wave = padded[at : at + window].clone()
            wave[: chunk.audible[0]] = 0
            wave[chunk.audible[1] :] = 0
            for k, target in enumerate(targets):
                estimate = model(model.front.stft(wave[None]), torch.tensor([TARGETS.index(target)]))
                out[k, at : at + window] += model.front.istft(estimate, length=window)[0] * chunk.weight[:, None]
    return out[:, lead : lead + len(mixture)].numpy()


@pytest.mark.parametrize(
    "protocol,overlap,min_trim", [("crossfade", 0.5, 5000), ("crossfade", 0.0, 5000), ("official", 0.5, 129),
                                  ("official", 0.0, 129)]
)  # fmt: skip
@pytest.mark.parametrize("length", [2500, 5001])
def test_streamed_blocks_are_the_whole_track_separation(protocol, overlap, min_trim, length):
    """Blocks handed on after every (chunk, target) pair: no seam where one ends, for both protocols."""
    torch.manual_seed(0)
    model = build_model(TINY_MODEL).eval()
    mixture = noise(length, seed=length)
    targets = ["bass", "vocals"]
    options = dict(overlap=overlap, device="cpu", protocol=protocol, min_trim=min_trim)
    blocks = list(separate_stream(model, ArraySource(mixture, SAMPLE_RATE), targets, batch_size=1, **options))
    assert len(blocks) > 3 and all(b.shape[0] == 2 and b.dtype == np.float32 for b in blocks)
    streamed = np.concatenate(blocks, axis=1)
    expected = whole_track(model, mixture, targets, protocol, overlap, min_trim)
    assert streamed.shape == expected.shape == (2, length, 2)
    np.testing.assert_allclose(streamed, expected, rtol=0, atol=1e-6)
    assert np.abs(expected).max() > 1e-2


class WidestRead(ArraySource):
    """An in-memory source that remembers the longest range read from it."""

    widest = 0

    def read(self, start: int, stop: int) -> np.ndarray:
        self.widest = max(self.widest, stop - start)
        return super().read(start, stop)


def test_memory_does_not_grow_with_the_track():
    """Reads and blocks span one batch of windows however long the track (ten times longer here)."""
    spans = []
    for length in (20_000, 200_000):
        source = WidestRead(noise(length, seed=3), SAMPLE_RATE)
        blocks = list(separate_stream(SpecModel(identity), source, ["drums"], batch_size=4, device="cpu"))
        assert sum(b.shape[1] for b in blocks) == length
        np.testing.assert_allclose(np.concatenate(blocks, axis=1)[0], source.audio, atol=1e-4)
        spans.append((source.widest, max(b.shape[1] for b in blocks[1:-1])))
    assert spans[0] == spans[1] and spans[0][0] < 4 * WINDOW


def test_float32_means_no_tf32_and_the_flags_are_restored():
    """TF32 off for convolutions and matmuls while the model runs in float32 (GPUs from Ampere on
    use TF32 for float32 convolutions unless told not to); bf16 leaves the flags alone."""
    seen = []

    def record(spec, condition):
        seen.append(
            (
                torch.backends.cudnn.allow_tf32,
                torch.backends.cuda.matmul.allow_tf32,
                torch.get_float32_matmul_precision(),
            )
        )
        return spec

    before = torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    try:
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")  # TF32 matmuls
        separate_track(SpecModel(record), noise(2000), targets=["vocals"], device="cpu")
        assert seen and set(seen) == {(False, False, "highest")}
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (True, True)
        assert torch.get_float32_matmul_precision() == "high"
        seen.clear()
        separate_track(SpecModel(record), noise(2000), targets=["vocals"], device="cpu", precision="bf16")
        assert seen and set(seen) == {(True, True, "high")}
    finally:
        torch.backends.cudnn.allow_tf32 = before[0]
        torch.set_float32_matmul_precision(before[1])


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
        assert sorted(p.name for p in (out / "test" / track).iterdir()) == sorted(f"{t}.flac" for t in TARGETS)
        for target in TARGETS:
            path = out / "test" / track / f"{target}.flac"
            assert (sf.info(str(path)).format, sf.info(str(path)).subtype) == ("FLAC", "PCM_16")
            written, rate = sf.read(path, dtype="float32")
            assert rate == SAMPLE_RATE
            np.testing.assert_allclose(written, expected[target].clip(-1, 1), rtol=0, atol=PCM16)
    assert json.loads((out / "clipped.json").read_text()) == {t: dict.fromkeys(TARGETS, 0) for t in cache.audio}
    assert [p.name for p in (tmp_path / "results").iterdir()] == ["estimates"]  # no temp folder left


def test_stage_clips_to_16_bit_and_counts_what_it_clipped(tmp_path, monkeypatch):
    """Each target scales the mixture by its own factor: the louder ones go past full scale."""
    gains = {"vocals": 0.5, "drums": 2.0, "bass": 4.0, "other": 1.0}
    scale = torch.tensor([gains[t] for t in TARGETS])
    model = SpecModel(lambda s, c: s * scale[c][:, None, None, None])
    monkeypatch.setattr(estimates, "load_model", lambda path: model)
    mixture = noise(30_000, seed=5)
    out = separate_tracks(tmp_path / "unused.pt", MemoryCache({"loud": {"mixture": mixture}}), tmp_path / "est")
    clipped = json.loads((out / "clipped.json").read_text())["loud"]
    expected = separate_track(model, mixture, device="cpu")
    for target, gain in gains.items():
        written, _ = sf.read(out / "test" / "loud" / f"{target}.flac", dtype="float32")
        np.testing.assert_allclose(expected[target], gain * mixture, rtol=0, atol=1e-4)
        np.testing.assert_allclose(written, expected[target].clip(-1, 1), rtol=0, atol=PCM16)
        assert clipped[target] == np.sum(np.abs(expected[target]) > 1), target
    assert clipped["vocals"] == 0 and 0 < clipped["drums"] < clipped["bass"]


def test_16_bit_flac_changes_every_score_by_rounding_only(tmp_path):
    """A real excerpt, estimates with the other stems leaking in (a separation of realistic
    quality, 5 to 15 dB), scored with the fast engine as float32 and after the stage's FLAC round
    trip: every window's SDR, ISR, SIR and SAR of every target moves by less than 0.01 dB."""
    from lightsaft.bsseval import bss_eval_v4
    from lightsaft.data.audio import read_stems

    require_ffmpeg()
    stems, _ = read_stems(shared_path("musdb", "musdb18-7", "test", f"{FALCON}.stem.mp4"))
    estimates = {t: 0.8 * stems[t] + 0.15 * (stems["mixture"] - stems[t]) for t in TARGETS}
    assert max(np.abs(e).max() for e in estimates.values()) < 1  # unclipped: rounding only
    rounded = {}
    for target, audio in estimates.items():
        with AudioWriter(tmp_path, target, SAMPLE_RATE, 2, "flac") as writer:
            writer.write(audio)
        assert writer.clipped == 0
        rounded[target], _ = sf.read(writer.path, dtype="float32")
    refs = [stems[t].astype(np.float64) for t in TARGETS]
    sets = [[estimates[t].astype(np.float64) for t in TARGETS], [rounded[t].astype(np.float64) for t in TARGETS]]
    before, after = (np.asarray(s) for s in bss_eval_v4(refs, sets, window=SAMPLE_RATE, hop=SAMPLE_RATE))
    assert np.array_equal(np.isnan(before), np.isnan(after))
    valid = ~np.isnan(before)
    assert valid.sum() > 4 * 4 * 5 and 3 < np.nanmedian(before[0]) < 20  # 4 metrics x 4 targets x >5 windows
    change = np.abs(after - before)[valid]
    print(f"largest change of a score: {change.max():.2e} dB")
    assert change.max() < 0.01


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
