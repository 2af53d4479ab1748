"""The results page: its content against the scores, its audio excerpts, its errors, and a real
headless Chromium that loads it from disk and plays every player."""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from browser import PNG, Page, chromium, wait_for
from helpers import TINY_MODEL, MemoryCache

from lightsaft.data.audio import write_audio
from lightsaft.evaluation.scores import KINDS, METRICS, VARIANTS, score_table, summarize
from lightsaft.model.unet import build_model, count_parameters
from lightsaft.report.results import ReportError, build_report, unique_slugs
from lightsaft.spectral import SAMPLE_RATE, TARGETS
from lightsaft.train import EpochCurves

TRACKS = ('Tom & Jerry - <Live> "Take 2"', "Zoë - Two Seconds")
SECONDS = 3.0
CLIPPED = 1234  # samples of the second track's drums estimate clipped to 16 bits


def make_inputs(root: Path) -> SimpleNamespace:
    """Two noise-stem tracks, estimates = stems + noise (the first track's as 16-bit FLAC, as the
    separate stage writes them now, the second's as float WAV), the evaluate stage's score tables
    (random frame scores, some NaN as museval writes for silent frames, random whole-track SDR
    variants, aggregated by its ``summarize``; clipped samples in one estimate), a tiny weights
    file, train.json and three epochs of curves."""
    rng = np.random.default_rng(0)
    audio, rows = {}, []
    for track in TRACKS:
        stems = {t: (rng.standard_normal((int(SECONDS * SAMPLE_RATE), 2)) * 0.1).astype(np.float32) for t in TARGETS}
        audio[track] = {"mixture": sum(stems.values()), **stems}
        for target in TARGETS:
            suffix, subtype = (".flac", "PCM_16") if track == TRACKS[0] else (".wav", None)
            write_audio(
                root / "est" / "test" / track / f"{target}{suffix}",
                stems[target] + rng.standard_normal(stems[target].shape) * 0.02,
                SAMPLE_RATE,
                subtype,
            )
            for metric, kind, frame in itertools.product(METRICS, KINDS, range(4)):
                value = np.nan if frame == 3 and target == "bass" else rng.normal(5 if kind == "estimate" else -5, 3)
                rows.append((track, target, metric, frame, value, kind))
            for metric, kind in itertools.product(VARIANTS, KINDS):
                rows.append((track, target, metric, None, rng.normal(6 if kind == "estimate" else -4, 3), kind))
    scores = score_table(rows)
    (root / "scores").mkdir()
    scores.to_csv(root / "scores" / "scores.csv", index=False, float_format="%.5f")
    summarize(scores)[0].to_csv(root / "scores" / "summary.csv", index=False, float_format="%.5f")
    clipped = [(track, target, CLIPPED if (track, target) == (TRACKS[1], "drums") else 0) for track in TRACKS
               for target in TARGETS]  # fmt: skip
    pd.DataFrame(clipped, columns=["track", "target", "clipped"]).to_csv(root / "scores" / "clipped.csv", index=False)
    model = build_model(TINY_MODEL)
    (root / "train.json").write_text(
        json.dumps(
            {
                "best_val_loss": 0.04321,
                "epochs": 3,
                "steps": 300,
                "param_count": count_parameters(model),
                "precision": "32-true",
            }
        )
    )
    epochs = [(0.09, 1e-3), (0.04321, 1e-3), (0.05, 5e-4)]  # (val_loss, lr)
    curves = [",".join(EpochCurves.COLUMNS)] + [
        f"{e},{100 * (e + 1)},{0.5 / (e + 1)},{v},{lr},1.5,0.0" for e, (v, lr) in enumerate(epochs)
    ]
    (root / "curves.csv").write_text("\n".join(curves) + "\n")
    return SimpleNamespace(
        cache=MemoryCache(audio),
        scores_dir=root / "scores",
        estimates_dir=root / "est",
        curves_csv=root / "curves.csv",
        train_metrics=root / "train.json",
        model_params=dict(TINY_MODEL),
    )


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> SimpleNamespace:
    return make_inputs(tmp_path_factory.mktemp("report_inputs"))


@pytest.fixture(scope="module")
def report(tmp_path_factory, inputs) -> Path:
    """The default report (mp3 excerpts) of the two tracks."""
    out = tmp_path_factory.mktemp("report") / "report"
    return build_report(out, **vars(inputs), excerpt_seconds=2.0, excerpt_offset=0.5, dataset="synthetic")


def test_page_shows_every_track_with_its_players_and_scores(report, inputs):
    page = Page((report / "index.html").read_text(encoding="utf-8"))
    assert [row["track"] for row in page.rows] == list(TRACKS)  # escaped in the HTML, intact once parsed
    assert "<Live>" not in (report / "index.html").read_text(encoding="utf-8")

    scores = pd.read_csv(inputs.scores_dir / "scores.csv")
    medians = scores[scores["metric"] == "SDR"].groupby(["track", "target", "kind"])["value"].median()
    whole = scores[scores["kind"] == "estimate"].set_index(["track", "target", "metric"])["value"]
    for row in page.rows:
        assert list(row["audio"]) == ["mixture", *TARGETS]
        for attrs in row["audio"].values():
            assert "controls" in attrs and attrs["preload"] == "metadata"
            assert not os.path.isabs(attrs["src"]) and (report / attrs["src"]).is_file()
            assert sf.info(str(report / attrs["src"])).duration == pytest.approx(2.0, abs=0.01)
        for target in TARGETS:
            assert row["sdr"][target] == f"{medians[(row['track'], target, 'estimate')]:.2f}"
            assert row["baseline"][target] == f"{medians[(row['track'], target, 'baseline')]:.2f}"
            assert row["mdx"][target] == f"{whole[(row['track'], target, 'SDR_MDX')]:.2f}"
            assert row["si-sdr"][target] == f"{whole[(row['track'], target, 'SI_SDR')]:.2f}"
        shown = {(row["track"], t): n for t, n in row["clipped"].items()}
        assert shown == ({(TRACKS[1], "drums"): f"{CLIPPED:,} samples clipped"} if row["track"] == TRACKS[1] else {})
    # The estimates were made worse target by target: the page must not show one number for all.
    assert len({row["sdr"][t] for row in page.rows for t in TARGETS}) == 8

    summary = pd.read_csv(inputs.scores_dir / "summary.csv").set_index(["target", "metric"])
    header, *body = page.summary
    assert header == ["Target", "SDR", "Mixture SDR", "Improvement", "SIR", "ISR", "SAR", "SDR (MDX)", "SI-SDR"]
    assert [cells[0] for cells in body] == ["Vocals", "Drums", "Bass", "Other", "Mean"]
    for cells, target in zip(body, (*TARGETS, "mean")):
        sdr = summary.loc[(target, "SDR")]
        assert cells[1:4] == [f"{sdr['estimate']:.2f}", f"{sdr['baseline']:.2f}", f"{sdr['improvement']:+.2f}"]
        others = [f"{summary.loc[(target, m), 'estimate']:.2f}" if target != "mean" else "–" for m in METRICS[1:]]
        assert cells[4:7] == others
        assert cells[7:] == [f"{summary.loc[(target, m), 'estimate']:.2f}" for m in VARIANTS]  # mean over tracks

    text = " ".join(page.text)
    assert "SDR (MDX): MDX 2021 challenge SDR: whole track, mean over tracks" in text  # which SDR is which
    assert "not comparable with each other" in text
    assert f"drums {CLIPPED:,} samples in 1 track" in text
    for fact in (
        "LightSAFT",
        "Parameters",
        f"{count_parameters(build_model(TINY_MODEL)):,}",
        "300 (3 epochs)",
        "0.04321",
        "synthetic",
        "256 / hop 64",
    ):
        assert fact in text
    assert "curves.png" in page.links and (report / "curves.png").read_bytes()[:8] == PNG
    assert not [link for link in page.links if "://" in link or link.startswith("//")]
    assert sorted(p.name for p in report.iterdir()) == ["audio", "curves.png", "index.html"]


@pytest.mark.parametrize("offset,seconds,expected", [(0.5, 1.0, 1.0), (2.5, 10.0, 0.5)])
def test_excerpts_are_the_requested_slice_of_every_source(tmp_path, inputs, offset, seconds, expected):
    out = build_report(
        tmp_path / "r", **vars(inputs), excerpt_seconds=seconds, excerpt_offset=offset, audio_format="wav"
    )
    track = TRACKS[1]
    start, stop = round(offset * SAMPLE_RATE), round((offset + expected) * SAMPLE_RATE)
    folder = out / "audio" / unique_slugs(list(TRACKS))[track]
    mixture, rate = sf.read(folder / "mixture.wav", dtype="float32")
    assert rate == SAMPLE_RATE and sf.info(str(folder / "mixture.wav")).subtype == "PCM_16"
    np.testing.assert_allclose(mixture, inputs.cache.audio[track]["mixture"][start:stop], atol=1 / 32768)
    estimate, _ = sf.read(inputs.estimates_dir / "test" / track / "bass.wav", dtype="float32")
    np.testing.assert_allclose(sf.read(folder / "bass.wav", dtype="float32")[0], estimate[start:stop], atol=1 / 32768)


def test_slugs_are_safe_and_distinct():
    assert unique_slugs(["A b", "a-B", "!!!", "Zoë - x"]) == {
        "A b": "a-b",
        "a-B": "a-b-2",
        "!!!": "track",
        "Zoë - x": "zo-x",
    }


def test_bad_input_names_the_problem_and_keeps_the_old_report(tmp_path, inputs, report):
    out, estimates, scores = tmp_path / "report", tmp_path / "estimates", tmp_path / "scores"
    for source, copy in ((report, out), (inputs.estimates_dir, estimates), (inputs.scores_dir, scores)):
        shutil.copytree(source, copy)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))

    def fails(match, **changes):
        args = {**vars(inputs), **changes}
        with pytest.raises(ReportError, match=match):
            build_report(out, **args)
        assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["estimates", "report", "scores"]

    os.remove(estimates / "test" / TRACKS[1] / "drums.wav")
    fails(r"drums\.flac \(or \.wav\): estimate not found; rerun the separate stage", estimates_dir=estimates)
    fails(r"report\.excerpt_offset = 3\.5: beyond the end of .*\(3\.0 s\)", excerpt_offset=3.5)
    table = pd.read_csv(scores / "scores.csv")
    table.assign(track=table["track"].replace(TRACKS[0], "Stale")).to_csv(scores / "scores.csv", index=False)
    fails(r"scores\.csv: scores for \['Stale'\], which are not test tracks", scores_dir=scores)
    (scores / "summary.csv").write_text("target,metric\nvocals,SDR\n")
    fails(r"summary\.csv: columns \['estimate', 'baseline', 'improvement'\] missing", scores_dir=scores)


# ---------------------------------------------------------------------------------------
# A real browser
@pytest.mark.slow  # a real headless Chromium (a process of its own)
def test_chromium_loads_and_plays_every_player(report, tmp_path):
    driver = chromium(tmp_path / "profile")
    try:
        driver.get((report / "index.html").as_uri())
        audios = "Array.from(document.querySelectorAll('audio'))"
        assert driver.execute_script(f"return {audios}.length") == 5 * len(TRACKS)
        ready = wait_for(driver, f"return {audios}.every(a => a.readyState >= 1 && a.duration > 0)")
        states = driver.execute_script(
            f"return {audios}.map(a => [a.currentSrc, a.readyState, a.duration, a.error && a.error.code])"
        )
        assert ready, f"not every player loaded its metadata: {states}"
        assert all(duration == pytest.approx(2.0, abs=0.05) for _, _, duration, _ in states)
        driver.execute_script(f"{audios}.forEach(a => {{ a.muted = true; a.play(); }})")
        played = wait_for(driver, f"return {audios}.every(a => a.currentTime > 0)")
        assert played, driver.execute_script(f"return {audios}.map(a => [a.currentSrc, a.currentTime, a.paused])")
        driver.execute_script(f"{audios}.forEach(a => a.pause())")
        assert driver.execute_script(
            "const i = document.querySelector('img.curves'); return i.complete && i.naturalWidth > 0"
        )
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1280, height + 140)  # the whole page in one screenshot
        shot = tmp_path / "report.png"
        assert driver.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == PNG and shot.stat().st_size > 20_000
        if keep := os.environ.get("LIGHTSAFT_REPORT_SCREENSHOT"):
            shutil.copyfile(shot, keep)
    finally:
        driver.quit()


def test_a_subset_of_the_test_tracks_scored_shows_those(tmp_path, inputs):
    """evaluate.tracks scored one of the two test tracks: the page shows that one, says so, and
    plays no other."""
    scores = tmp_path / "scores"
    shutil.copytree(inputs.scores_dir, scores)
    table = pd.read_csv(scores / "scores.csv")
    table[table["track"] == TRACKS[1]].to_csv(scores / "scores.csv", index=False)
    out = build_report(tmp_path / "report", **(vars(inputs) | {"scores_dir": scores}), excerpt_seconds=1.0)
    page = Page((out / "index.html").read_text())
    assert [row["track"] for row in page.rows] == [TRACKS[1]] and len(list((out / "audio").iterdir())) == 1
    assert "1 of 2" in page.text


def test_a_pretrained_model_gets_its_source_instead_of_curves(tmp_path, inputs):
    """train.pretrained: train.json names the imported checkpoint and the curves have no rows."""
    given = vars(inputs) | {"curves_csv": tmp_path / "curves.csv", "train_metrics": tmp_path / "train.json"}
    given["curves_csv"].write_text(",".join(EpochCurves.COLUMNS) + "\n")
    metrics = json.loads(inputs.train_metrics.read_text())
    metrics.update(pretrained="lasaft_large_2021", pretrained_sha256="ab" * 32, steps=0, epochs=0, best_val_loss=None)
    given["train_metrics"].write_text(json.dumps(metrics))
    out = build_report(tmp_path / "report", **given, excerpt_seconds=1.0)
    text = " ".join(Page((out / "index.html").read_text()).text)
    assert "lasaft_large_2021 (sha256 abababababab" in text and "Not trained here" in text
    assert not (out / "curves.png").exists() and "Best val loss" not in text
