"""The fast BSSEval v4 engine against museval itself: every frame, every metric, NaN positions.
(Both engines against sigsep's regression scores: test_evaluate.)"""

from __future__ import annotations

import museval
import numpy as np
import pytest
import torch
from helpers import FALCON, ROCK, TWO, MemoryCache, make_tracks, require_ffmpeg, shared_path, write_estimates

from lightsaft.bsseval import bss_eval_v4, window_bounds
from lightsaft.data.audio import read_stems
from lightsaft.devices import DeviceError
from lightsaft.evaluation.engines import evaluate_tracks
from lightsaft.evaluation.scores import write_scores
from lightsaft.separation.estimates import load_model
from lightsaft.separation.track import separate_track
from lightsaft.spectral import TARGETS

TOLERANCE = 0.01  # dB, on every finite frame value


def assert_agree(fast: np.ndarray, reference: np.ndarray, what: str = "") -> None:
    """Same shape, NaN at the same places, finite values within TOLERANCE."""
    assert fast.shape == reference.shape, what
    np.testing.assert_array_equal(np.isnan(fast), np.isnan(reference), err_msg=f"{what}: NaN positions")
    finite = np.isfinite(reference)
    np.testing.assert_array_equal(np.isfinite(fast), finite, err_msg=f"{what}: infinite values")
    np.testing.assert_allclose(fast[finite], reference[finite], atol=TOLERANCE, rtol=0, err_msg=what)


def museval_metrics(refs: np.ndarray, est: np.ndarray, rate: int = 44100) -> np.ndarray:
    return np.stack(museval.evaluate(refs, est, win=rate, hop=rate, mode="v4"))


@pytest.mark.parametrize("length", [5000, 30000, 44100, 100000, 3 * 44100])
def test_random_signals_of_any_length_match_museval(length):
    """Much shorter than one window, shorter, exactly one, not whole windows, whole windows."""
    rng = np.random.default_rng(length)
    refs = rng.standard_normal((2, length, 2))
    estimates = refs + 0.5 * refs[::-1] + 0.3 * rng.standard_normal(refs.shape)
    (fast,) = bss_eval_v4(refs, [estimates], 44100, 44100)
    assert fast.shape == (4, 2, len(window_bounds(length, 44100, 44100)))
    assert_agree(fast, museval_metrics(refs, estimates), f"{length} samples")


def test_silent_windows_are_nan_as_in_museval():
    """A reference silent in window 1, an estimate silent in window 3: NaN for all targets there;
    a stem silent in anti-phase (channel sum zero) counts as silent, as museval tests it."""
    rng = np.random.default_rng(1)
    refs = rng.standard_normal((3, 5 * 44100, 2))
    refs[1, 44100 : 2 * 44100] = 0
    refs[2, 4 * 44100 :, 1] = -refs[2, 4 * 44100 :, 0]
    estimates = refs + 0.2 * rng.standard_normal(refs.shape)
    estimates[0, 3 * 44100 : 4 * 44100] = 0
    (fast,) = bss_eval_v4(refs, [estimates], 44100, 44100)
    assert np.isnan(fast[:, :, [1, 3, 4]]).all() and np.isfinite(fast[:, :, [0, 2]]).all()
    assert_agree(fast, museval_metrics(refs, estimates))


def test_a_source_silent_throughout_is_refused_as_museval_does():
    rng = np.random.default_rng(5)
    refs = rng.standard_normal((2, 50000, 2))
    for bad_refs, bad_est, what in (
        (np.stack([refs[0], 0 * refs[1]]), refs, "reference"),
        (refs, np.stack([refs[0], 0 * refs[1]]), "estimated"),
    ):
        with pytest.raises(ValueError, match="non-silent"):
            museval_metrics(bad_refs, bad_est)
        with pytest.raises(ValueError, match=f"every {what} source must be non-silent"):
            bss_eval_v4(bad_refs, [bad_est], 44100, 44100)


def test_estimate_sets_share_the_references_but_not_their_results():
    """Scoring two sets in one call equals scoring each alone (the shared Gram matrix and the
    deduplicated mixture signal change nothing)."""
    rng = np.random.default_rng(2)
    refs = rng.standard_normal((3, 70000, 2))
    estimates = refs + 0.4 * rng.standard_normal(refs.shape)
    mix = refs.sum(0) + 0.01 * rng.standard_normal(refs.shape[1:])
    mixture = np.stack([mix] * 3)
    both = bss_eval_v4(refs, [estimates, [mix] * 3], 44100, 44100)  # one object, three targets
    for got, alone in zip(
        both, (bss_eval_v4(refs, [estimates], 44100, 44100)[0], bss_eval_v4(refs, [mixture], 44100, 44100)[0])
    ):
        np.testing.assert_allclose(got, alone, atol=1e-9)
    assert_agree(both[1], museval_metrics(refs, mixture), "mixture")


def test_stems_are_decoded_to_16_bit_as_musdb_does():
    """musdb decodes stem.mp4 as 16-bit PCM. Decoded to float instead, the AAC stems are hard
    band-limited, the Gram matrix of their delays is singular to float64 precision, and
    museval's ISR/SIR/SAR turn into rounding noise (several dB apart with 1 or 2 BLAS threads)."""
    require_ffmpeg()
    stems, _ = read_stems(shared_path("musdb", "musdb18-7", "train", f"{ROCK}.stem.mp4"))
    for name, audio in stems.items():
        pcm = audio.astype(np.float64) * 32768
        assert np.array_equal(pcm, np.round(pcm)) and np.abs(pcm).max() <= 32768, name


def test_engines_write_the_same_outputs(tmp_path):
    """The evaluate stage with either engine: the same files, the same rows, values within 0.01 dB."""
    tracks = make_tracks(["a", "b"], seconds=2.5)
    write_estimates(tmp_path / "est", tracks, lambda s, t: s[t] + 0.5 * s["mixture"])
    results = {
        engine: evaluate_tracks(MemoryCache(tracks), tmp_path / "est", jobs=1, targets=TWO, engine=engine, device="cpu")
        for engine in ("fast", "museval")
    }
    for engine, result in results.items():
        write_scores(result, tmp_path / engine)
    files = {
        engine: sorted(p.relative_to(tmp_path / engine) for p in (tmp_path / engine).rglob("*")) for engine in results
    }
    assert files["fast"] == files["museval"]
    fast, ref = results["fast"].scores, results["museval"].scores
    assert fast[["track", "target", "metric", "frame", "kind"]].equals(
        ref[["track", "target", "metric", "frame", "kind"]]
    )
    assert_agree(fast["value"].to_numpy(), ref["value"].to_numpy())
    assert results["fast"].metrics.keys() == results["museval"].metrics.keys()


def test_cuda_matches_cpu_or_is_refused_before_any_work(tmp_path):
    """With a GPU: the same numbers as on the CPU. Without: a clear error, nothing written."""
    if torch.cuda.is_available():
        rng = np.random.default_rng(3)
        refs = rng.standard_normal((4, 3 * 44100 + 5, 2))
        estimates = refs + 0.3 * rng.standard_normal(refs.shape)
        (cpu,) = bss_eval_v4(refs, [estimates], 44100, 44100)
        (gpu,) = bss_eval_v4(refs, [estimates], 44100, 44100, device="cuda")
        np.testing.assert_allclose(gpu, cpu, atol=1e-6)
        return
    tracks = make_tracks(["a"], seconds=1.0)
    write_estimates(tmp_path / "est", tracks, lambda s, t: s[t])
    with pytest.raises(DeviceError, match="CUDA is not available"):
        evaluate_tracks(MemoryCache(tracks), tmp_path / "est", targets=TWO, device="cuda")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------
# Real MUSDB18 tracks, four targets, several kinds of estimates
def estimate_kinds(stems: dict[str, np.ndarray], separator) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(4)
    length = len(stems["mixture"])
    kinds = {}
    for snr in (0, 10, 30):
        kinds[f"stems + noise at {snr} dB"] = {
            t: stems[t] + rng.standard_normal((length, 2)) * np.sqrt(np.mean(stems[t] ** 2) / 10 ** (snr / 10))
            for t in TARGETS
        }
    kinds["mixture"] = {t: stems["mixture"] for t in TARGETS}
    silenced = {t: stems[t] + 0.05 * rng.standard_normal((length, 2)) for t in TARGETS}
    silenced["bass"][2 * 44100 : 3 * 44100] = 0  # one silent second in one estimate: NaN frame
    kinds["partly silent"] = silenced
    kinds["trained model"] = {
        t: v.astype(np.float64)
        for t, v in separate_track(separator, stems["mixture"].astype(np.float32), device="cpu").items()
    }
    return kinds


@pytest.mark.slow
@pytest.mark.parametrize(
    "path, chosen",
    [
        (("train", ROCK), ("stems + noise at 0 dB", "stems + noise at 30 dB", "partly silent")),
        (("test", FALCON), ("stems + noise at 10 dB", "mixture", "trained model")),
    ],
    ids=["rock", "falcon"],
)
def test_real_tracks_match_museval_for_every_kind_of_estimate(path, chosen, trained):
    """Each kind of estimate on one of the two real tracks (museval takes about 8 s per kind and track)."""
    require_ffmpeg()
    split, name = path
    stems, rate = read_stems(shared_path("musdb", "musdb18-7", split, f"{name}.stem.mp4"))
    stems = {k: v.astype(np.float64) for k, v in stems.items()}
    refs = np.stack([stems[t] for t in TARGETS])
    kinds = {k: v for k, v in estimate_kinds(stems, load_model(trained.outputs.weights)).items() if k in chosen}
    assert set(kinds) == set(chosen)  # the two tracks' choices cover every kind estimate_kinds makes
    sets = [np.stack([est[t] for t in TARGETS]) for est in kinds.values()]
    fast = bss_eval_v4(refs, sets, rate, rate)
    for kind, got, est in zip(kinds, fast, sets):
        assert_agree(got, museval_metrics(refs, est, rate), f"{name}, {kind}")
    if "partly silent" in kinds:
        assert np.isnan(fast[list(kinds).index("partly silent")][:, :, 2]).all()
