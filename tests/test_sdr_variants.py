"""The MDX challenge SDR and SI-SDR against values computed by hand on known signals, and the MDX
SDR against the MDX 2021 starter kit's formula as its documentation states it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lightsaft.evaluation.sdr_variants import MDX_EPS, SignalError, mdx_sdr, score_track, si_sdr

SAMPLES = 44_100


def signal_and_noise(rng: np.random.Generator, snr_db: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """A zero-mean stereo reference and noise orthogonal to it in each channel, scaled so that
    channel c has the energy ratio ``snr_db[c]`` (dB) of reference over noise."""
    reference = rng.standard_normal((SAMPLES, 2)) * 0.1
    reference -= reference.mean(axis=0)
    noise = rng.standard_normal((SAMPLES, 2))
    noise -= noise.mean(axis=0)
    noise -= (noise * reference).sum(axis=0) / (reference**2).sum(axis=0) * reference
    energy = (reference**2).sum(axis=0)
    noise *= np.sqrt(energy / 10 ** (np.asarray(snr_db) / 10) / (noise**2).sum(axis=0))
    return reference, noise


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def test_orthogonal_noise_gives_the_chosen_ratio(rng):
    reference, noise = signal_and_noise(rng, (12.0, 12.0))
    assert mdx_sdr(reference, reference + noise) == pytest.approx(12.0, abs=1e-6)
    assert si_sdr(reference, reference + noise) == pytest.approx(12.0, abs=1e-6)


def test_channels_pool_energies_for_mdx_and_average_decibels_for_si_sdr(rng):
    reference, noise = signal_and_noise(rng, (10.0, 20.0))
    reference[:, 1] *= np.sqrt((reference[:, 0] ** 2).sum() / (reference[:, 1] ** 2).sum())  # equal energies
    noise[:, 1] *= np.sqrt((reference[:, 1] ** 2).sum() / 100 / (noise[:, 1] ** 2).sum())
    assert si_sdr(reference, reference + noise) == pytest.approx(15.0, abs=1e-6)
    assert mdx_sdr(reference, reference + noise) == pytest.approx(10 * math.log10(2 / (0.1 + 0.01)), abs=1e-6)


def test_gain_changes_mdx_sdr_not_si_sdr(rng):
    reference, noise = signal_and_noise(rng, (8.0, 8.0))
    gain = 0.5
    energy, noise_energy = (reference**2).sum(), (noise**2).sum()
    expected = 10 * math.log10(energy / ((1 - gain) ** 2 * energy + gain**2 * noise_energy))
    assert si_sdr(reference, gain * (reference + noise)) == pytest.approx(8.0, abs=1e-6)
    assert mdx_sdr(reference, gain * (reference + noise)) == pytest.approx(expected, abs=1e-6)
    assert expected < 8.0 - 1  # the gain error costs the MDX SDR more than a decibel


def test_si_sdr_removes_the_mean_and_mdx_sdr_does_not(rng):
    reference, noise = signal_and_noise(rng, (15.0, 15.0))
    offset = 0.05
    assert si_sdr(reference, reference + noise + offset) == pytest.approx(15.0, abs=1e-6)
    expected = 10 * math.log10((reference**2).sum() / (((noise + offset) ** 2).sum()))
    assert mdx_sdr(reference, reference + noise + offset) == pytest.approx(expected, abs=1e-6)


def test_silence_stays_finite_with_the_epsilon(rng):
    silent = np.zeros((SAMPLES, 2))
    reference, noise = signal_and_noise(rng, (10.0, 10.0))
    assert mdx_sdr(silent, silent) == 0.0
    assert si_sdr(silent, silent) == 0.0
    noise_energy = (noise**2).sum()
    assert mdx_sdr(silent, noise) == pytest.approx(10 * math.log10(MDX_EPS / (noise_energy + MDX_EPS)), abs=1e-9)
    assert si_sdr(silent, noise) < -80
    assert mdx_sdr(reference, silent) == pytest.approx(0.0, abs=1e-9)  # the error is the reference itself
    assert si_sdr(reference, silent) == pytest.approx(0.0, abs=1e-9)
    assert mdx_sdr(reference, reference) == pytest.approx(10 * math.log10(((reference**2).sum() + MDX_EPS) / MDX_EPS))


def starter_kit_song_sdr(references: np.ndarray, estimates: np.ndarray) -> np.ndarray:
    """The MDX 2021 starter kit's per-song scoring as its docs/LOCAL_RUN.md states it: targets
    stacked ``[targets, samples, channels]`` and cast to float32; per target, the sums of squares
    over samples and channels each plus 1e-7, then 10 log10 of their ratio."""
    references, estimates = references.astype(np.float32), estimates.astype(np.float32)
    power = np.square(references).sum(axis=(1, 2)) + 1e-7
    error = np.square(references - estimates).sum(axis=(1, 2)) + 1e-7
    return 10 * np.log10(power / error)


def test_mdx_sdr_matches_the_starter_kit_formula(rng):
    targets = ("vocals", "drums", "bass", "other")
    references = {t: rng.standard_normal((SAMPLES, 2)) * level for t, level in zip(targets, (0.1, 0.2, 0.05, 0.0))}
    estimates = {t: references[t] + rng.standard_normal((SAMPLES, 2)) * 0.03 for t in targets}
    scores = score_track(references, estimates)
    kit = starter_kit_song_sdr(np.stack([references[t] for t in targets]), np.stack([estimates[t] for t in targets]))
    ours = [scores[f"sdr_mdx_{t}"] for t in targets]
    assert ours == pytest.approx(kit.tolist(), abs=1e-3)  # float32 rounding in the kit
    assert scores["sdr_mdx_mean"] == pytest.approx(float(np.mean(kit)), abs=1e-3)  # the kit's song SDR
    assert scores["sdr_mdx_other"] < -50  # silent reference, noisy estimate


def test_score_track_keys_and_means(rng):
    reference, noise = signal_and_noise(rng, (6.0, 6.0))
    references = {"vocals": reference, "bass": reference}
    scores = score_track(references, {"vocals": reference + noise, "bass": reference + 2 * noise})
    assert set(scores) == {
        "sdr_mdx_vocals",
        "sdr_mdx_bass",
        "sdr_mdx_mean",
        "si_sdr_vocals",
        "si_sdr_bass",
        "si_sdr_mean",
    }
    assert scores["si_sdr_bass"] == pytest.approx(6.0 - 20 * math.log10(2), abs=1e-6)
    assert scores["si_sdr_mean"] == pytest.approx((scores["si_sdr_vocals"] + scores["si_sdr_bass"]) / 2)


def test_bad_input_names_the_track_and_target(rng):
    reference = rng.standard_normal((100, 2))
    with pytest.raises(SignalError, match="song A vocals: reference \\(100, 2\\) and estimate \\(99, 2\\)"):
        score_track({"vocals": reference}, {"vocals": reference[:99]}, track="song A")
    with pytest.raises(SignalError, match="song A: no reference for the estimated target\\(s\\) drums"):
        score_track({"vocals": reference}, {"drums": reference}, track="song A")
    broken = reference.copy()
    broken[3, 0] = np.nan
    with pytest.raises(SignalError, match="NaN"):
        si_sdr(reference, broken)
    with pytest.raises(SignalError, match="\\[samples, channels\\]"):
        mdx_sdr(reference[:, 0], reference[:, 0])
