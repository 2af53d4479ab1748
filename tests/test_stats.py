"""Paired per-track statistics: checked on simulated studies, not assumed.

Simulated per-track SDR (dB): a track effect shared by all points (songs differ far more than
models do: that is what pairing removes), a point effect, and per-track noise per seed.
The rate tests assert a binomial band around the nominal rate, computed from the number of
simulated studies (99.9%: a correct implementation fails one run in a thousand at most).
``benchmarks/stats_calibration.py`` prints the same figures over more studies.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from lightsaft.study.stats import (
    DIFFERENCE_COLUMN,
    MEAN,
    ONE_SEED,
    P_COLUMN,
    StatsError,
    compare_points,
    paired_difference,
    summary_columns,
)

TARGETS = ("vocals", "drums", "bass", "other")
STUDIES = 400


def simulate_study(
    rng: np.random.Generator, effects: dict[str, float], tracks: int = 50, seeds: int = 2, noise: float = 0.3
) -> pd.DataFrame:
    """Long per-track scores of a study whose points differ from the first by ``effects`` (dB)."""
    track_effect = rng.normal(5.0, 3.0, size=(tracks, len(TARGETS)))
    rows = []
    for point, effect in effects.items():
        for seed in range(seeds):
            sdr = track_effect + effect + rng.normal(0.0, noise, size=track_effect.shape)
            rows += [
                (point, seed, f"track {t:02d}", target, sdr[t, k])
                for t in range(tracks)
                for k, target in enumerate(TARGETS)
            ]
    return pd.DataFrame(rows, columns=["point", "seed", "track", "target", "sdr"])


def band(studies: int, rate: float, confidence: float = 0.999) -> tuple[float, float]:
    low, high = scipy_stats.binom.interval(confidence, studies, rate)
    return low / studies, high / studies


def row(stats, point: str, target: str = MEAN) -> pd.Series:
    rows = stats.differences
    return rows[(rows["point"] == point) & (rows["target"] == target)].iloc[0]


def test_a_better_point_is_significant_and_its_interval_covers_the_margin():
    stats = compare_points(simulate_study(np.random.default_rng(1), {"dk=64": 0.0, "dk=32": 0.4, "dk=16": 0.0}))
    assert stats.reference == "dk=64"  # the first point by default
    assert stats.targets == [*TARGETS, MEAN]
    better = row(stats, "dk=32")
    assert better["tracks"] == 50 and better["seeds"] == 2 and better["note"] == ""
    assert better["ci_low"] <= 0.4 <= better["ci_high"]
    assert better["ci_high"] - better["ci_low"] < 0.3  # pairing removed the 3 dB spread of the songs
    assert better["p_holm"] < 1e-6 and better["significant"]
    for target in TARGETS:
        assert row(stats, "dk=32", target)["significant"]
    friedman = stats.friedman.set_index("target")
    assert (friedman["p_value"] < 1e-6).all() and (friedman["tracks"] == 50).all()
    conover = stats.conover[MEAN]
    assert list(conover.index) == list(conover.columns) == ["dk=64", "dk=32", "dk=16"]
    assert np.allclose(conover.to_numpy(), conover.to_numpy().T)
    assert conover.loc["dk=32", "dk=64"] < 0.05 and conover.loc["dk=32", "dk=16"] < 0.05


def test_noise_only_differences_are_rejected_at_the_nominal_rate():
    """400 simulated studies of two points that differ by noise only. Only the p-value is under
    test, so the bootstrap runs 100 resamples (its interval is not looked at) to keep this fast."""
    rng = np.random.default_rng(2)
    rejected = 0
    for _ in range(STUDIES):
        tracks = rng.normal(5.0, 3.0, size=50)
        found = paired_difference(tracks + rng.normal(0, 0.3, 50), tracks + rng.normal(0, 0.3, 50), resamples=100)
        rejected += found.p_value < 0.05
    rate = rejected / STUDIES
    print(f"\nfalse-positive rate (Wilcoxon, noise only, {STUDIES} studies of 50 tracks): {rate:.3f}")
    low, high = band(STUDIES, 0.05)
    assert low <= rate <= high, f"rate {rate:.3f} outside the binomial band [{low:.3f}, {high:.3f}] around 0.05"


def test_the_bootstrap_interval_covers_the_median_difference_about_95_percent_of_the_time():
    """400 simulated studies, heavy-tailed per-track differences (Student t, 5 degrees of freedom)
    around a known median. 2,000 resamples instead of 10,000 keep this at a second: with either,
    an endpoint's Monte Carlo error (about 0.01 dB here) is small beside the interval's width
    (about 0.3 dB), so the coverage is the same; the benchmark measures it with 10,000."""
    rng = np.random.default_rng(3)
    covered = 0
    for _ in range(STUDIES):
        differences = 0.25 + 0.4 * rng.standard_t(5, size=50)
        found = paired_difference(np.zeros(50), differences, resamples=2000)
        covered += found.ci_low <= 0.25 <= found.ci_high
    coverage = covered / STUDIES
    print(f"\ncoverage of the 95% bootstrap interval ({STUDIES} studies of 50 tracks): {coverage:.3f}")
    low, high = band(STUDIES, 0.95)
    assert low <= coverage <= high, f"coverage {coverage:.3f} outside the binomial band [{low:.3f}, {high:.3f}]"


def test_seeds_are_averaged_within_a_track_before_pairing():
    scores = pd.DataFrame(
        [("a", s, f"t{t}", "vocals", 1.0 * t) for s in (0, 1) for t in range(6)]
        + [("b", 0, f"t{t}", "vocals", t + 1.0) for t in range(6)]
        + [("b", 1, f"t{t}", "vocals", t + 3.0) for t in range(5)],  # seed 1 lacks t5: t5 leaves b
        columns=["point", "seed", "track", "target", "sdr"],
    )
    stats = compare_points(scores)
    b = stats.per_track[stats.per_track["point"] == "b"].set_index("track")["sdr"]
    assert b.to_dict() == {f"t{t}": t + 2.0 for t in range(5)}
    found = row(stats, "b", "vocals")
    assert found["tracks"] == 5 and found["median_difference"] == 2.0
    assert stats.targets == ["vocals"]  # one target: no mean over targets
    assert found["ci_low"] == found["ci_high"] == 2.0


def test_points_pair_on_their_common_tracks_and_the_mean_needs_every_target():
    scores = simulate_study(np.random.default_rng(4), {"ref": 0.0, "new": 0.5}, tracks=8)
    scores = scores[~((scores["point"] == "new") & scores["track"].isin(["track 00", "track 01"]))]
    scores = scores[~((scores["point"] == "ref") & (scores["track"] == "track 02") & (scores["target"] == "bass"))]
    stats = compare_points(scores)
    assert row(stats, "new", "vocals")["tracks"] == 6
    assert row(stats, "new", "bass")["tracks"] == 5
    assert row(stats, "new", MEAN)["tracks"] == 5


def test_fewer_than_five_common_tracks_give_no_p_value_and_say_why():
    stats = compare_points(simulate_study(np.random.default_rng(5), {"ref": 0.0, "x": 1.0, "y": 0.0}, tracks=4))
    found = row(stats, "x")
    assert math.isnan(found["p_holm"]) and math.isnan(found["ci_low"]) and found["significant"] is None
    assert found["note"] == "4 common tracks: no interval or p-value below 5"
    columns = summary_columns(stats).loc["x"]
    assert columns[P_COLUMN] == "n/a: 4 common tracks: no interval or p-value below 5"
    assert re.fullmatch(r"\+\d\.\d\d \(4 tracks\)", columns[DIFFERENCE_COLUMN])
    assert stats.friedman["note"].str.contains("4 tracks common to all points").all()
    assert stats.conover == {}


def test_one_training_seed_flags_the_p_values():
    stats = compare_points(simulate_study(np.random.default_rng(6), {"ref": 0.0, "x": 1.0}, seeds=1))
    assert ONE_SEED in row(stats, "x")["note"]
    assert summary_columns(stats).loc["x", P_COLUMN] == f"<0.001 * ({ONE_SEED})"
    two = compare_points(simulate_study(np.random.default_rng(6), {"ref": 0.0, "x": 1.0}, seeds=2))
    assert row(two, "x")["note"] == "" and summary_columns(two).loc["x", P_COLUMN] == "<0.001 *"


def test_holm_adjusts_within_each_targets_family_of_comparisons():
    effects = {"ref": 0.0, "a": 0.3, "b": 0.0, "c": 0.05}
    stats = compare_points(simulate_study(np.random.default_rng(7), effects), reference="ref")
    for target in [*TARGETS, MEAN]:
        family = stats.differences[stats.differences["target"] == target].sort_values("p_wilcoxon")
        assert len(family) == 3
        p = family["p_wilcoxon"].to_numpy()
        holm_steps = np.minimum(1.0, np.maximum.accumulate(p * [3, 2, 1]))  # Holm's step-down, by hand
        assert family["p_holm"].to_numpy() == pytest.approx(holm_steps)
        assert (family["p_holm"] >= family["p_wilcoxon"]).all()
        assert family["p_holm"].is_monotonic_increasing


def test_an_explicit_reference_and_the_summary_columns():
    stats = compare_points(simulate_study(np.random.default_rng(8), {"a": 0.0, "b": 0.5}), reference="b")
    assert stats.reference == "b" and list(stats.differences["point"].unique()) == ["a"]
    columns = summary_columns(stats, "vocals")
    assert list(columns.columns) == [DIFFERENCE_COLUMN, P_COLUMN]
    assert columns.loc["b"].tolist() == ["reference", ""]
    assert re.fullmatch(r"-0\.\d\d \[-0\.\d\d, -0\.\d\d\]", columns.loc["a", DIFFERENCE_COLUMN])
    friedman = stats.friedman.set_index("target")
    assert friedman.loc[MEAN, "note"].startswith("the Friedman test needs at least 3 points (2 given)")
    assert stats.conover == {}


def test_bad_tables_are_refused_with_what_to_do():
    scores = simulate_study(np.random.default_rng(9), {"a": 0.0, "b": 0.5}, tracks=5)
    with pytest.raises(StatsError, match="reference point 'c' has no scores; the points are: a, b"):
        compare_points(scores, reference="c")
    with pytest.raises(StatsError, match="lack the column\\(s\\) seed"):
        compare_points(scores.drop(columns="seed"))
    with pytest.raises(StatsError, match="scores track 'track 00' target 'vocals' more than once"):
        compare_points(pd.concat([scores, scores.iloc[:1]]))
    with pytest.raises(StatsError, match="no per-track scores"):
        compare_points(scores.iloc[:0])
    with pytest.raises(StatsError, match="target 'drums' was not compared"):
        summary_columns(compare_points(scores[scores["target"] == "vocals"]), "drums")
