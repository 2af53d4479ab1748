"""museval scoring: the sigsep regression values, sanity bounds, tables, failures per track; the
whole-track SDR variants beside it; FLAC or WAV estimates, their clipped-sample counts; a subset
of the test tracks (evaluate.tracks)."""

from __future__ import annotations

import json
import math
import os

import museval
import numpy as np
import pandas as pd
import pytest
import simplejson
from helpers import TWO, MemoryCache, make_tracks, require_ffmpeg, shared_path, write_estimates

from lightsaft.config import defaults, validate
from lightsaft.data.audio import read_audio, read_stems, write_audio
from lightsaft.errors import ConfigError
from lightsaft.evaluation import engines, sdr_variants
from lightsaft.evaluation.engines import ENGINES, evaluate_tracks, score_track
from lightsaft.evaluation.scores import (
    METRICS,
    TRACK_COLUMNS,
    EvaluationError,
    summarize,
    write_metrics,
    write_scores,
    write_sdr_plot,
    write_track_table,
)
from lightsaft.schema import set_dotted


@pytest.mark.parametrize("engine", ENGINES)
def test_both_engines_reproduce_sigsep_regression_scores(engine):
    """sigsep-mus-eval's regression: random vocals/accompaniment estimates of 80s Rock.

    The references are decoded as musdb decodes them (16-bit PCM); every metric matches."""
    require_ffmpeg()
    stems, rate = read_stems(shared_path("musdb", "musdb18-7", "train", "Music Delta - 80s Rock.stem.mp4"))
    reference = json.loads(shared_path("musdb", "reference_scores", "Music Delta - 80s Rock.json").read_text())
    np.random.seed(0)
    estimates = {
        "vocals": np.random.random(stems["mixture"].shape),
        "accompaniment": np.random.random(stems["mixture"].shape),
    }
    refs = {
        "vocals": stems["vocals"].astype(np.float64),
        "accompaniment": (stems["drums"] + stems["bass"] + stems["other"]).astype(np.float64),
    }
    got = json.loads(score_track(refs, estimates, "Music Delta - 80s Rock", rate, engine=engine).json)
    for target in reference["targets"]:
        mine = next(t for t in got["targets"] if t["name"] == target["name"])
        assert len(mine["frames"]) == len(target["frames"]) == 6  # whole seconds only
        for metric in METRICS:
            expected = [f["metrics"][metric] for f in target["frames"]]
            np.testing.assert_allclose([f["metrics"][metric] for f in mine["frames"]], expected, atol=0.1)


def test_true_stems_score_high_and_are_written_in_museval_format(tmp_path):
    tracks = make_tracks(["A - One"])
    rng = np.random.default_rng(1)
    # An exact copy scores +inf, which museval stores as NaN; a -60 dB noise floor keeps it finite.
    write_estimates(tmp_path / "est", tracks, lambda s, t: s[t] + 1e-4 * rng.standard_normal(s[t].shape))
    result = evaluate_tracks(MemoryCache(tracks), tmp_path / "est", jobs=1, targets=TWO)
    write_scores(result, tmp_path / "scores")
    assert result.failed == {}
    for target in TWO:
        assert result.metrics[f"sdr_{target}"] > 50
        assert result.metrics[f"sdr_improvement_{target}"] > 45
    assert abs(result.metrics["baseline_sdr_vocals"]) < 1  # two equal-power sources: input SDR ~ 0 dB

    document = simplejson.loads((tmp_path / "scores" / "museval" / "test" / "A - One.json").read_text())
    store = museval.TrackStore(track_name="A - One")
    store.scores = document
    assert store.validate() is None  # museval's own JSON schema
    frames = museval.aggregate.json2df(document, "A - One")
    assert set(frames["target"]) == set(TWO) and len(frames) == 2 * 4 * 2  # targets x metrics x frames
    table = pd.read_csv(tmp_path / "scores" / "scores.csv")
    assert list(table.columns) == ["track", "target", "metric", "frame", "value", "kind"]
    assert set(table["kind"]) == {"estimate", "baseline"}
    framed = table[table["metric"].isin(METRICS)]
    assert len(framed) == 2 * len(frames) and framed["frame"].notna().all()
    whole = table[~table["metric"].isin(METRICS)]  # the whole-track variants: no frame
    assert len(whole) == 2 * 2 * 2 and set(whole["metric"]) == {"SDR_MDX", "SI_SDR"} and whole["frame"].isna().all()
    assert "0.0000" not in (tmp_path / "scores" / "scores.csv").read_text().split("\n")[1]  # frame 0, not 0.00000
    assert sorted(os.listdir(tmp_path)) == ["est", "scores"]
    assert sorted(os.listdir(tmp_path / "scores")) == ["museval", "scores.csv", "summary.csv"]  # nothing clipped


def test_mixture_as_estimate_equals_the_baseline(tmp_path):
    tracks = make_tracks(["a", "b"])
    write_estimates(tmp_path / "est", tracks, lambda s, t: s["mixture"])
    result = evaluate_tracks(MemoryCache(tracks), tmp_path / "est", jobs=1, targets=TWO)
    scores = result.scores.set_index(["track", "target", "metric", "frame"])
    estimate, baseline = scores[scores["kind"] == "estimate"], scores[scores["kind"] == "baseline"]
    assert len(estimate) == len(baseline) == 2 * 2 * (4 * 2 + 2)  # tracks x targets x (metrics x frames + variants)
    pd.testing.assert_series_equal(estimate["value"], baseline["value"])
    summary = result.summary.set_index(["target", "metric"])
    np.testing.assert_allclose(summary["improvement"].dropna(), 0, atol=1e-9)
    assert result.metrics["sdr_improvement_mean"] == pytest.approx(0, abs=1e-9)


@pytest.mark.slow  # two worker processes (each imports torch), and a fresh one for the track that crashed
def test_failing_tracks_are_named_and_the_others_kept(tmp_path):
    tracks = make_tracks(["good", "no estimates", "crash", "short"], seconds=1.2)
    write_estimates(tmp_path / "est", tracks, lambda s, t: s[t] * 0.9)
    for target in TWO:
        os.remove(tmp_path / "est" / "test" / "no estimates" / f"{target}.wav")
        write_audio(tmp_path / "est" / "test" / "short" / f"{target}.wav", tracks["short"][target][:1000], 44100)
    result = evaluate_tracks(MemoryCache(tracks, crash="crash"), tmp_path / "est", jobs=2, targets=TWO)
    write_scores(result, tmp_path / "scores")
    assert sorted(result.failed) == ["crash", "no estimates", "short"]
    assert "no estimates/vocals.flac (or .wav): estimate not found" in result.failed["no estimates"]
    assert "worker process died" in result.failed["crash"]
    assert "short/vocals: estimate (1000, 2), reference (52920, 2)" in result.failed["short"]
    assert set(result.scores["track"]) == {"good"}
    assert os.listdir(tmp_path / "scores" / "museval" / "test") == ["good.json"]
    with pytest.raises(EvaluationError, match=r"3 of 4 track\(s\): 'no estimates'.*'crash'.*'short'"):
        result.check()


def test_one_job_scores_in_this_process_and_names_failing_tracks(tmp_path, monkeypatch):
    """No worker process to start (seconds of imports): the tracks are scored here, a failing one
    is named and the others kept. A track that kills its process would stop the stage: isolating
    that takes jobs >= 2 (test_failing_tracks_are_named_and_the_others_kept)."""

    def no_pool(*args, **kwargs):
        raise AssertionError("jobs=1 started a worker pool")

    monkeypatch.setattr(engines, "running", no_pool)
    tracks = make_tracks(["good", "unreadable", "no estimates"], seconds=1.2)
    write_estimates(tmp_path / "est", tracks, lambda s, t: s[t] * 0.9)
    for target in TWO:
        os.remove(tmp_path / "est" / "test" / "no estimates" / f"{target}.wav")
    result = evaluate_tracks(MemoryCache(tracks, fail="unreadable"), tmp_path / "est", jobs=1, targets=TWO)
    assert sorted(result.failed) == ["no estimates", "unreadable"]
    assert result.failed["unreadable"] == "OSError: unreadable: cannot read"
    assert "vocals.flac (or .wav): estimate not found" in result.failed["no estimates"]
    assert set(result.scores["track"]) == {"good"} and result.metrics["sdr_vocals"] > 15
    assert engines._WORKER == {}  # nothing of the evaluation kept in the module


def test_nothing_to_evaluate_is_an_error(tmp_path):
    with pytest.raises(EvaluationError, match="run the separate stage first"):
        evaluate_tracks(MemoryCache(make_tracks(["a"], 0.1)), tmp_path / "none", targets=TWO)


def test_summary_is_median_of_frames_then_tracks():
    rows = []
    per_track = {"t1": [1.0, 2.0, 9.0, np.nan], "t2": [4.0, 6.0], "t3": [0.0]}  # medians 2, 5, 0 -> 2
    for target in ("vocals", "drums", "bass", "other"):
        for track, values in per_track.items():
            for metric in METRICS:
                for frame, value in enumerate(values):
                    offset = {"vocals": 0, "drums": 1, "bass": 2, "other": 3}[target]
                    rows.append((track, target, metric, frame, value + offset, "estimate"))
                    rows.append((track, target, metric, frame, value - 1, "baseline"))
    scores = pd.DataFrame(rows, columns=["track", "target", "metric", "frame", "value", "kind"])
    summary, metrics = summarize(scores)
    table = summary.set_index(["target", "metric"])
    assert table.loc[("vocals", "SIR"), "estimate"] == 2.0 and table.loc[("other", "SAR"), "estimate"] == 5.0
    assert table.loc[("drums", "SDR"), "baseline"] == 1.0
    assert table.loc[("bass", "SDR"), "improvement"] == 3.0
    assert table.loc[("mean", "SDR"), ["estimate", "baseline", "improvement"]].tolist() == [3.5, 1.0, 2.5]
    assert table.loc[("mean", "SDR"), "definition"].startswith("museval BSSEval v4")
    assert metrics["sdr_mean"] == 3.5 and metrics["baseline_sdr_drums"] == 1.0 and metrics["tracks"] == 3
    assert not any(key.startswith(("sdr_mdx", "si_sdr")) for key in metrics)  # no whole-track rows: no variants


def test_sdr_plot_table(tmp_path):
    summary = pd.DataFrame(
        [("vocals", "SDR", 5.0, 1.0, 4.0), ("vocals", "SIR", 9.0, 2.0, 7.0), ("mean", "SDR", 5.0, 1.0, 4.0)],
        columns=["target", "metric", "estimate", "baseline", "improvement"],
    )
    write_sdr_plot(tmp_path / "plots" / "sdr.csv", summary)
    assert (tmp_path / "plots" / "sdr.csv").read_text().splitlines() == [
        "target,sdr,baseline_sdr",
        "vocals,5.00000,1.00000",
    ]


def test_metrics_file_writes_nan_as_null(tmp_path):
    write_metrics(tmp_path / "metrics" / "sdr.json", {"sdr_vocals": 4.123456789, "sdr_bass": float("nan")})
    assert json.loads((tmp_path / "metrics" / "sdr.json").read_text()) == {"sdr_vocals": 4.12346, "sdr_bass": None}


def test_rounding_noise_is_shown_as_a_dash_and_stored_as_is():
    """The mixture lies in the span of the references: its SAR is a residual at float precision
    (175 dB), not a score. Printed as '-', with its 'improvement'; SDR and stored values untouched."""
    from lightsaft.evaluation.scores import readable

    summary = pd.DataFrame(
        [
            {"target": "vocals", "metric": "SDR", "estimate": 3.3, "baseline": -4.6, "improvement": 7.9},
            {"target": "vocals", "metric": "SAR", "estimate": 5.0, "baseline": 175.586, "improvement": -170.586},
            {"target": "vocals", "metric": "SIR", "estimate": 160.0, "baseline": 1.0, "improvement": 159.0},
            {"target": "mean", "metric": "SDR", "estimate": 200.0, "baseline": -4.6, "improvement": 204.6},
        ]
    )
    shown = readable(summary)
    assert shown.iloc[0].tolist() == ["vocals", "SDR", "3.300", "-4.600", "7.900"]
    assert shown.iloc[1].tolist() == ["vocals", "SAR", "5.000", "-", "-"]
    assert shown.iloc[2].tolist() == ["vocals", "SIR", "-", "1.000", "-"]
    assert shown.iloc[3].tolist() == ["mean", "SDR", "200.000", "-4.600", "204.600"]  # SDR is never hidden
    assert summary.loc[1, "baseline"] == 175.586


# ---------------------------------------------------------------------------------------
# The whole-track SDR variants, FLAC estimates, clipped samples, a subset of the tracks
HALF = 20 * math.log10(2)  # MDX SDR of an estimate at half the reference's amplitude: 6.02 dB


def half_gain(stems, target):
    """Half the reference, plus a -80 dB noise floor (museval scores an exact copy as NaN)."""
    return 0.5 * stems[target] + 1e-5 * np.random.default_rng(len(target)).standard_normal(stems[target].shape)


@pytest.mark.parametrize("engine", [pytest.param(e, marks=[pytest.mark.slow] * (e == "museval")) for e in ENGINES])
def test_sdr_variants_are_scored_beside_museval_by_either_engine(tmp_path, engine):
    """A gain error: the MDX SDR counts it as distortion (6.02 dB at half the amplitude), as
    museval's v4 SDR does (it scores images, with no gain allowance); SI-SDR does not. The mixture
    as estimate of one of two equal-power sources: about 0 dB for both variants. Track "a" is
    16-bit FLAC (as the separate stage writes it now), "b" float WAV."""
    tracks = make_tracks(["a", "b"], seconds=1.2)
    write_estimates(tmp_path / "est", {"b": tracks["b"]}, half_gain)
    for target in TWO:
        write_audio(tmp_path / "est" / "test" / "a" / f"{target}.flac", half_gain(tracks["a"], target), 44100, "PCM_16")
    result = evaluate_tracks(MemoryCache(tracks), tmp_path / "est", jobs=1, targets=TWO, engine=engine, device="cpu")
    assert result.failed == {}
    rows = result.scores.set_index(["kind", "track", "target", "metric"])["value"]
    for track in ("a", "b"):
        references = {t: tracks[track][t].astype(np.float64) for t in TWO}
        suffix = "flac" if track == "a" else "wav"
        estimates = {
            t: read_audio(tmp_path / "est" / "test" / track / f"{t}.{suffix}")[0].astype(np.float64) for t in TWO
        }
        expected = sdr_variants.score_track(references, estimates, track)
        mixture = sdr_variants.score_track(references, {t: tracks[track]["mixture"] for t in TWO}, track)
        for target in TWO:
            assert rows[("estimate", track, target, "SDR_MDX")] == pytest.approx(expected[f"sdr_mdx_{target}"])
            assert rows[("estimate", track, target, "SI_SDR")] == pytest.approx(expected[f"si_sdr_{target}"])
            assert rows[("estimate", track, target, "SDR_MDX")] == pytest.approx(HALF, abs=0.01)
            assert rows[("estimate", track, target, "SI_SDR")] > 40  # invariant to the gain
            assert rows[("baseline", track, target, "SDR_MDX")] == pytest.approx(mixture[f"sdr_mdx_{target}"])
            assert abs(rows[("baseline", track, target, "SI_SDR")]) < 0.5  # the other source is the error
    summary = result.summary.set_index(["target", "metric"])
    for target in TWO:
        mean = np.mean([rows[("estimate", t, target, "SDR_MDX")] for t in ("a", "b")])  # mean over songs (MDX)
        assert summary.loc[(target, "SDR_MDX"), "estimate"] == pytest.approx(mean)
        assert result.metrics[f"sdr_mdx_{target}"] == pytest.approx(mean)
        assert summary.loc[(target, "SDR_MDX"), "definition"].startswith("MDX 2021 challenge SDR")
        assert result.metrics[f"sdr_{target}"] == pytest.approx(HALF, abs=0.05)  # museval v4 (images): no gain allowed
    assert result.metrics["sdr_mdx_mean"] == pytest.approx(HALF, abs=0.01) and result.metrics["si_sdr_mean"] > 40
    assert summary.loc[("mean", "SI_SDR"), "estimate"] == pytest.approx(result.metrics["si_sdr_mean"])

    write_track_table(tmp_path / "metrics" / "per_track_sdr.csv", result.scores)
    table = pd.read_csv(tmp_path / "metrics" / "per_track_sdr.csv")
    assert list(table.columns) == list(TRACK_COLUMNS) and len(table) == 2 * 2
    medians = (
        result.scores.query("kind == 'estimate' and metric == 'SDR'").groupby(["track", "target"])["value"].median()
    )
    for row in table.itertuples():
        assert row.sdr == pytest.approx(medians[(row.track, row.target)], abs=1e-5)
        assert row.sdr_mdx == pytest.approx(rows[("estimate", row.track, row.target, "SDR_MDX")], abs=1e-5)
        assert row.si_sdr == pytest.approx(rows[("estimate", row.track, row.target, "SI_SDR")], abs=1e-5)


def test_listed_tracks_their_clipped_counts_and_an_estimate_in_both_formats(tmp_path):
    """evaluate.tracks scores the listed test tracks only (in the test set's order); the separate
    stage's clipped-sample counts are kept for the scored ones; a target with both a .flac and a
    .wav estimate fails its track, by name."""
    tracks = make_tracks(["a", "b", "c", "d"], seconds=1.2)
    write_estimates(tmp_path / "est", tracks, lambda s, t: s[t] * 0.9)
    write_audio(tmp_path / "est" / "test" / "b" / "drums.flac", tracks["b"]["drums"], 44100, "PCM_16")
    counts = {"a": {"vocals": 12, "drums": 0}, "b": {"vocals": 0, "drums": 3}, "d": {"vocals": 0, "drums": 7}}
    (tmp_path / "est" / "clipped.json").write_text(json.dumps(counts))  # no entry for c: it is not scored
    cache = MemoryCache(tracks)
    result = evaluate_tracks(cache, tmp_path / "est", jobs=1, targets=TWO, tracks=["d", "a", "b"])
    assert list(dict.fromkeys(result.scores["track"])) == ["a", "d"] and result.metrics["tracks"] == 2
    assert list(result.failed) == ["b"] and "both drums.flac and drums.wav" in result.failed["b"]
    write_scores(result, tmp_path / "scores")
    clipped = pd.read_csv(tmp_path / "scores" / "clipped.csv")
    assert clipped.values.tolist() == [["a", "vocals", 12], ["a", "drums", 0], ["d", "vocals", 0], ["d", "drums", 7]]

    # Refused before any scoring: a name that is not a test track, a clipped.json that lacks a track or is broken.
    with pytest.raises(
        EvaluationError, match=r"evaluate\.tracks: 'z' not among the 4 test tracks \('a', 'b', 'c', 'd'\)"
    ):
        evaluate_tracks(cache, tmp_path / "est", targets=TWO, tracks=["a", "z"])
    with pytest.raises(EvaluationError, match=r"clipped\.json: no clipped-sample counts for 'c' .*rerun the separate"):
        evaluate_tracks(cache, tmp_path / "est", targets=TWO)
    (tmp_path / "est" / "clipped.json").write_text("{")
    with pytest.raises(EvaluationError, match=r"clipped\.json: not valid JSON"):
        evaluate_tracks(cache, tmp_path / "est", targets=TWO)


def test_evaluate_tracks_is_validated_where_the_names_are_known():
    def params(**overrides):
        p = defaults()
        for key, value in overrides.items():
            set_dotted(p, key, value)
        return validate(p)

    assert params(**{"evaluate.tracks": ["any name"]})["evaluate"]["tracks"] == [
        "any name"
    ]  # MUSDB18: the stage checks
    synthetic = {"data.source": "synthetic", "data.synthetic.test_tracks": 2}
    assert params(**synthetic, **{"evaluate.tracks": ["synthetic test 001"]})["evaluate"]["tracks"]
    with pytest.raises(ConfigError, match=r"evaluate\.tracks = .*'synthetic test 002' not among the synthetic test"):
        params(**synthetic, **{"evaluate.tracks": ["synthetic test 002"]})
    with pytest.raises(ConfigError, match=r"evaluate\.tracks = \[\]: an empty list scores nothing"):
        params(**{"evaluate.tracks": []})
    with pytest.raises(ConfigError, match=r"names a track twice"):
        params(**{"evaluate.tracks": ["a", "a"]})
