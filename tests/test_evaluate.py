"""museval scoring: the sigsep regression values, sanity bounds, tables, failures per track."""

from __future__ import annotations

import json
import os

import museval
import numpy as np
import pandas as pd
import pytest
import simplejson
from helpers import TWO, MemoryCache, make_tracks, require_ffmpeg, shared_path, write_estimates

from lightsaft.data.audio import read_stems, write_audio
from lightsaft.evaluation import engines
from lightsaft.evaluation.engines import ENGINES, evaluate_tracks, score_track
from lightsaft.evaluation.scores import METRICS, EvaluationError, summarize, write_metrics, write_scores, write_sdr_plot


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
    assert len(table) == 2 * len(frames) and set(table["kind"]) == {"estimate", "baseline"}
    assert sorted(os.listdir(tmp_path)) == ["est", "scores"]


def test_mixture_as_estimate_equals_the_baseline(tmp_path):
    tracks = make_tracks(["a", "b"])
    write_estimates(tmp_path / "est", tracks, lambda s, t: s["mixture"])
    result = evaluate_tracks(MemoryCache(tracks), tmp_path / "est", jobs=1, targets=TWO)
    scores = result.scores.set_index(["track", "target", "metric", "frame"])
    estimate, baseline = scores[scores["kind"] == "estimate"], scores[scores["kind"] == "baseline"]
    assert len(estimate) == len(baseline) == 2 * 2 * 4 * 2
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
    assert "vocals.wav: file not found" in result.failed["no estimates"]
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
    assert "vocals.wav: file not found" in result.failed["no estimates"]
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
    assert table.loc[("mean", "SDR")].tolist() == [3.5, 1.0, 2.5]
    assert metrics["sdr_mean"] == 3.5 and metrics["baseline_sdr_drums"] == 1.0 and metrics["tracks"] == 3


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
