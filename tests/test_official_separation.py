"""The official separation protocol: ``separate_golden.pt`` reproduced, its chunking arithmetic, its options."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import SpecModel, identity, make_project, noise, shared_path

from lightsaft.cli import main
from lightsaft.separation.plans import official_plan, official_trim
from lightsaft.separation.track import separate_track
from lightsaft.spectral import SAMPLE_RATE, TARGETS, SpectralFrontEnd
from lightsaft.weights.official import read_official
from lightsaft.weights.published import default_min_trim

TOLERANCE = 5e-5  # the official output went through a 16-bit wav (up to ~3e-5)


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(shared_path("reference", "official_ckpt", "separate_golden.pt"), weights_only=True)


@pytest.fixture(scope="module")
def sep_model():
    return read_official(shared_path("reference", "official_ckpt", "lightsaft_sep.ckpt")).model


def compare(estimate: np.ndarray, reference: torch.Tensor, label: str) -> None:
    """``estimate`` against the first samples of the official output (longer at overlap 0)."""
    expected = reference[: len(estimate)].numpy()
    error = np.abs(estimate - expected).max()
    print(f"{label}: max abs error {error:.3g} (peak {np.abs(expected).max():.3g})")
    np.testing.assert_allclose(estimate, expected, rtol=0, atol=TOLERANCE)


@pytest.mark.slow  # 4 targets x (46 + 91) windows: about a minute on two busy cores
@pytest.mark.parametrize("overlap", [0.0, 0.5])
def test_separate_golden_is_reproduced(reference, sep_model, overlap):
    assert (reference["window_length"], reference["trim_length"]) == (16128, official_trim(256))
    mixture = reference["input"].numpy()
    estimates = separate_track(sep_model, mixture, overlap=overlap, batch_size=16, device="cpu", protocol="official")
    for target in TARGETS:
        assert estimates[target].shape == mixture.shape == (265216, 2)
        compare(estimates[target], reference["outputs"][f"overlap{overlap}/{target}"], f"overlap {overlap} {target}")


@pytest.mark.parametrize("overlap", [0.0, 0.5])
def test_golden_start_of_track(reference, sep_model, overlap):
    """The fast version: vocals on the first three windows of input. Output more than a window
    before the cut does not depend on where the input ends."""
    window = reference["window_length"]
    mixture = reference["input"][: 3 * window].numpy()
    vocals = separate_track(sep_model, mixture, ["vocals"], overlap, batch_size=16, device="cpu", protocol="official")
    compare(
        vocals["vocals"][: 2 * window], reference["outputs"][f"overlap{overlap}/vocals"], f"start, overlap {overlap}"
    )


def test_cli_separates_with_an_official_checkpoint(reference, tmp_path, monkeypatch, capsys):
    """``--model file.ckpt --protocol official``: imported once into the cache, reused, golden output."""
    monkeypatch.setenv("DVC_ROOT", str(make_project(tmp_path / "project")))
    window = reference["window_length"]
    song = tmp_path / "start.wav"
    sf.write(song, reference["input"][: 3 * window].numpy(), SAMPLE_RATE, subtype="FLOAT")
    ckpt = shared_path("reference", "official_ckpt", "lightsaft_sep.ckpt")
    args = ["separate", str(song), "--model", str(ckpt), "--targets", "bass", "--protocol", "official"]
    args += ["--overlap", "0.5", "--batch-size", "16", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert "imported" in capsys.readouterr().out
    cached = list((tmp_path / "project" / ".lightsaft" / "pretrained").glob("lightsaft_sep-*.pt"))
    assert len(cached) == 1
    bass, rate = sf.read(tmp_path / "a" / "start" / "bass.wav", dtype="float32")
    assert rate == SAMPLE_RATE and bass.shape == (3 * window, 2)
    compare(bass[: 2 * window], reference["outputs"]["overlap0.5/bass"], "CLI, overlap 0.5")

    assert main([*args, "--out", str(tmp_path / "b"), "--targets", "other"]) == 0
    assert "imported" not in capsys.readouterr().out  # the cached import is reused
    assert (tmp_path / "b" / "start" / "other.wav").is_file()


# ---------------------------------------------------------------------------------------
# The arithmetic of the official chunks
def coverage(length: int, overlap: float, window: int = 16128, trim: int = 5120) -> np.ndarray:
    """How much each track sample counts in total, summed over the official chunks."""
    total = np.zeros(length + 2 * window)
    for chunk in official_plan(length, window, trim, overlap):
        total[trim + chunk.start : trim + chunk.start + window] += chunk.weight.numpy()
    return total[trim : trim + length]


@pytest.mark.parametrize("length", [1, 5000, 5888, 100_000, 265_216])
def test_official_chunks_without_overlap_tile_the_track(length):
    np.testing.assert_array_equal(coverage(length, 0.0), 1.0)


@pytest.mark.parametrize("length", [5000, 40_000, 100_000, 265_216])
def test_official_chunks_with_overlap_count_each_sample_once_but_near_the_end(length):
    """At overlap 0.5 the halves sum to one. Within the last window of the track, chunks that end
    less than a trim before the track end are not halved by the official code: samples there count
    up to twice (kept as it is, to reproduce the published figures), but none is lost."""
    total = coverage(length, 0.5)
    np.testing.assert_array_equal(total[: max(0, length - 16128)], 1.0)
    assert set(np.unique(total)) <= {1.0, 1.5, 2.0}


def test_official_chunks_near_the_start_read_silence_as_left_context():
    plan = official_plan(100_000, 16128, 5120, 0.5)
    assert [c.audible[0] for c in plan[:3]] == [5120, 5120, 0]  # starts 0 and 2944 are within the trim


def test_official_trim_and_defaults():
    assert official_trim(256) == 5120 and official_trim(1024) == 5120 and official_trim(1024, 16384) == 16384
    assert official_trim(4096) == 8192  # at least two hops
    assert (
        default_min_trim("lightsaft_small_2020") == 8192 and default_min_trim(None) == 5000
    )  # the MDX kit's predictor


class LongWindowModel(SpecModel):
    """The identity stand-in with a window long enough for the official trim (16128 samples)."""

    def __init__(self):
        super().__init__(identity)
        self.params.update(n_fft=512, hop_length=256, num_frame=64)
        self.front = SpectralFrontEnd(512, 256)


@pytest.mark.parametrize("length", [1, 300, 16128, 40_000])
def test_identity_model_gives_back_the_input_without_overlap(length):
    mixture = noise(length)
    out = separate_track(LongWindowModel(), mixture, ["drums"], overlap=0.0, device="cpu", protocol="official")
    np.testing.assert_allclose(out["drums"], mixture, atol=1e-5)


def test_bf16_only_when_asked(reference, sep_model):
    mixture = reference["input"][:16128].numpy()
    options = dict(targets=["vocals"], overlap=0.0, device="cpu", protocol="official")
    exact = separate_track(sep_model, mixture, **options)["vocals"]
    assert np.array_equal(exact, separate_track(sep_model, mixture, precision="float32", **options)["vocals"])
    bf16 = separate_track(sep_model, mixture, precision="bf16", **options)["vocals"]
    error = np.abs(bf16 - exact).max()
    assert 0 < error < 0.1 * np.abs(exact).max()  # bf16 ran (it differs), and is still the same separation
