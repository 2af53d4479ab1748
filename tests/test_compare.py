"""Comparing the points of a study: the whole path, from the experiments' git commits to the
tables, figures and the study's MLflow run, on a study built in seconds (git commits holding the
files the evaluate stage commits, with per-track SDRs chosen so that every statistic is known
by hand); and the parts (mean and spread over seeds, readable tables).
(Queued experiments reaching these tables through DVC run in test_pipeline.)"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from browser import PNG
from helpers import make_project
from mlflow.tracking import MlflowClient
from scipy import stats as scipy_stats

from lightsaft.cli import main
from lightsaft.spectral import TARGETS
from lightsaft.study.compare import aggregate, collect, compare_study
from lightsaft.study.stats import ONE_SEED
from lightsaft.study.studies import Point, Study, load_study
from lightsaft.tracking.study_run import STUDY_TAG

# ---------------------------------------------------------------------------------------
# The test study: dk {8, 16, 32} x seeds {1, 2}, 8 test tracks, four targets.
# museval SDR of track i, target k, point dk, seed s = 2 + i + 0.5 k + DIFFERENCE[dk][i] + SEED[s]:
# averaging the two seeds cancels SEED, so the per-track difference against dk 8 is exactly
# DIFFERENCE[dk] for every target and for the mean over targets.
TRACKS = [f"track {i}" for i in range(8)]
DIFFERENCE = {
    8: [0.0] * 8,
    16: [1.0 + 0.01 * i for i in range(8)],  # better on every track, by distinct margins
    32: [0.3, -0.2, 0.1, -0.4, 0.25, -0.15, 0.05, -0.35],  # noise: 4 up, 4 down
}
SEED = {1: -0.1, 2: 0.1}
MDX, SI = 0.7, -0.4  # the whole-track variants: museval's SDR plus these (plus 0.1 k for MDX)
STUDY = "ci-compare"


def sdr(dk: int, seed: int, i: int, k: int) -> float:
    return 2.0 + i + 0.5 * k + DIFFERENCE[dk][i] + SEED[seed]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def commit_experiment(repo: Path, name: str, dk: int, seed: int, per_track: bool = True) -> None:
    """What a finished ``dvc exp run`` of the point commits (its git-tracked outputs), and its ref."""
    rows, metrics = ["track,target,sdr,sdr_mdx,si_sdr"], {"tracks": float(len(TRACKS))}
    for k, target in enumerate(TARGETS):
        values = np.array([sdr(dk, seed, i, k) for i in range(len(TRACKS))])
        rows += [f"{t},{target},{v:.5f},{v + MDX + 0.1 * k:.5f},{v + SI:.5f}" for t, v in zip(TRACKS, values)]
        metrics[f"sdr_{target}"] = float(np.median(values))  # museval: median over tracks
        metrics[f"sdr_mdx_{target}"] = float(np.mean(values)) + MDX + 0.1 * k  # the variants: mean over tracks
        metrics[f"si_sdr_{target}"] = float(np.mean(values)) + SI
    for prefix in ("sdr", "sdr_mdx", "si_sdr"):
        metrics[f"{prefix}_mean"] = float(np.mean([metrics[f"{prefix}_{t}"] for t in TARGETS]))
    (repo / "metrics").mkdir(exist_ok=True)
    (repo / "metrics" / "per_track_sdr.csv").unlink(missing_ok=True)
    if per_track:
        (repo / "metrics" / "per_track_sdr.csv").write_text("\n".join(rows) + "\n")
    (repo / "metrics" / "sdr.json").write_text(json.dumps(metrics))
    train = {"param_count": 1000 * dk, "best_val_loss": 0.1 / dk, "steps": 300, "peak_cpu_rss_gb": 1.5}
    (repo / "metrics" / "train.json").write_text(json.dumps(train))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", name)
    git(repo, "update-ref", f"refs/exps/ab/{hashlib.sha1(name.encode()).hexdigest()[:8]}/{name}", "HEAD")


@pytest.fixture(scope="module")
def study_repo(tmp_path_factory) -> Path:
    repo = make_project(tmp_path_factory.mktemp("study"))
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "tests@example.com")
    git(repo, "config", "user.name", "tests")
    (repo / ".gitignore").write_text("*\n!metrics/\n!metrics/*\n")  # what the tests write: not in the experiments
    for dk, seed in itertools.product(DIFFERENCE, SEED):
        commit_experiment(repo, f"{STUDY}-dk{dk}-s{seed}", dk, seed)
    return repo


def write_study(repo: Path, seeds: list[int], name: str = STUDY, **extra) -> Path:
    body = {"study": name, "set": {"mlflow.experiment": name}, "grid": {"model.dk": list(DIFFERENCE)},
            "seeds": seeds, **extra}  # fmt: skip
    path = repo / f"{name}-{len(seeds)}.yaml"
    path.write_text(json.dumps(body))  # JSON is YAML
    return path


def in_repo(monkeypatch, repo: Path) -> MlflowClient:
    monkeypatch.chdir(repo)
    monkeypatch.setenv("DVC_ROOT", str(repo))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")


def cells(line: str) -> list[str]:
    """A markdown table row's cells, stripped."""
    return [c.strip() for c in line.strip().strip("|").split("|")]


def rows_by_first_cell(markdown: str, pattern: str) -> dict[str, list[str]]:
    """The first table's rows whose first cell matches ``pattern``, by that cell."""
    rows: dict[str, list[str]] = {}
    for line in markdown.splitlines():
        if re.match(rf"\| *({pattern}) *\|", line):
            rows.setdefault(cells(line)[0], cells(line))
    return rows


def exact_wilcoxon_p(differences: list[float]) -> float:
    """Two-sided exact Wilcoxon signed-rank p (distinct non-zero magnitudes), by enumerating all
    2^n sign patterns: independent of scipy."""
    ranks = scipy_stats.rankdata(np.abs(differences))
    observed = ranks[np.array(differences) > 0].sum()
    sums = [sum(r for r, s in zip(ranks, signs) if s) for signs in itertools.product((0, 1), repeat=len(ranks))]
    centre = ranks.sum() / 2
    return min(1.0, float(np.mean([abs(w - centre) >= abs(observed - centre) for w in sums])))


def test_a_study_compared_from_its_experiments_commits(study_repo, monkeypatch, capsys):
    """`lightsaft ablate --compare-only` on the test study: the paired statistics against the
    reference (dk 8) are the hand-computed ones; the tables, figures and the study's MLflow run
    hold them; a second comparison updates the same run."""
    client = in_repo(monkeypatch, study_repo)
    study_file = write_study(study_repo, [1, 2], reference={"model.dk": 8})
    assert main(["ablate", str(study_file), "--compare-only"]) == 0
    out = study_repo / "results" / "ablations" / STUDY
    assert sorted(p.name for p in out.iterdir()) == [
        "conover.csv", "differences.csv", "friedman.csv", "per_track.csv", "points.csv", "sdr.png", "summary.csv",
        "summary.md", "tracks.png",
    ]  # fmt: skip
    markdown = (out / "summary.md").read_text()
    assert markdown in capsys.readouterr().out

    # The paired differences, against values computed by hand.
    p16 = 2 / 2**8  # every one of 8 tracks better: the exact two-sided p
    p32 = exact_wilcoxon_p(DIFFERENCE[32])
    assert p32 > 0.5
    differences = pd.read_csv(out / "differences.csv")
    assert set(differences["target"]) == {*TARGETS, "mean"} and len(differences) == 2 * 5
    for target in (*TARGETS, "mean"):
        rows = differences[differences["target"] == target].set_index("point")
        assert rows.loc["dk=16", "median_difference"] == pytest.approx(np.median(DIFFERENCE[16]), abs=1e-4)
        assert rows.loc["dk=32", "median_difference"] == pytest.approx(np.median(DIFFERENCE[32]), abs=1e-4)
        assert rows.loc["dk=16", "p_wilcoxon"] == pytest.approx(p16)
        assert rows.loc["dk=32", "p_wilcoxon"] == pytest.approx(p32)
        assert rows.loc["dk=16", "p_holm"] == pytest.approx(2 * p16)  # Holm: the smaller of two p, times 2
        assert rows.loc["dk=32", "p_holm"] == pytest.approx(p32)  # the larger, times 1
        assert rows["significant"].tolist() == [True, False] and (rows["tracks"] == 8).all()
        assert (rows["seeds"] == 2).all() and rows["note"].isna().all()
        low, high = rows.loc["dk=16", ["ci_low", "ci_high"]]
        assert min(DIFFERENCE[16]) - 1e-4 <= low <= np.median(DIFFERENCE[16]) <= high <= max(DIFFERENCE[16]) + 1e-4
        low, high = rows.loc["dk=32", ["ci_low", "ci_high"]]
        assert low < 0 < high
    # Friedman, tracks as blocks: dk16 ranks first on every track, dk8 and dk32 share the rest
    # equally, so the rank sums are 12, 24, 12: chi2 = 12 / (8 * 3 * 4) * (144 + 576 + 144) - 3 * 8 * 4 = 12.
    friedman = pd.read_csv(out / "friedman.csv").set_index("target")
    assert friedman["statistic"].to_numpy() == pytest.approx([12.0] * 5)
    assert friedman["p_value"].to_numpy() == pytest.approx([math.exp(-6)] * 5)  # chi2(2) tail at 12
    conover = pd.read_csv(out / "conover.csv")
    assert set(conover["target"]) == {*TARGETS, "mean"} and len(conover) == 5 * 9

    # summary.csv: one row per point, means and spread over seeds, the statistics per target.
    summary = pd.read_csv(out / "summary.csv").set_index("point")
    assert list(summary.index) == ["dk=8", "dk=16", "dk=32"] and summary["reference"].tolist() == [True, False, False]
    assert summary["model.dk"].tolist() == [8, 16, 32] and (summary["seeds"] == 2).all()
    mean8 = np.mean([np.mean([np.median([sdr(8, s, i, k) for i in range(8)]) for k in range(4)]) for s in SEED])
    assert summary.loc["dk=8", "sdr_mean_mean"] == pytest.approx(mean8, abs=1e-4)
    assert summary.loc["dk=8", "sdr_mean_std"] == pytest.approx(0.2 / math.sqrt(2))  # two seeds 0.2 dB apart
    assert summary.loc["dk=8", "si_sdr_mean_mean"] == pytest.approx(summary.loc["dk=8", "sdr_mean_mean"] + SI)
    assert summary.loc["dk=16", "difference_vocals"] == pytest.approx(np.median(DIFFERENCE[16]), abs=1e-4)
    assert summary.loc["dk=16", "p_holm_mean"] == pytest.approx(2 * p16) and summary.loc["dk=16", "significant_mean"]
    assert math.isnan(summary.loc["dk=8", "p_holm_mean"])
    per_track = pd.read_csv(out / "per_track.csv")
    assert len(per_track) == 6 * 8 * 4 and set(per_track.columns) >= {"point", "experiment", "sdr", "sdr_mdx"}

    # summary.md: readable, each SDR named, grid values as given, significance marked.
    assert "**SDR (museval)**, the headline" in markdown and "reference point **dk=8**" in markdown
    assert "not whether one configuration" in markdown  # tracks, not trainings, are the sample
    rows = rows_by_first_cell(markdown, "8|16|32")
    assert set(rows) == {"8", "16", "32"}  # dk as given, not 8.000
    assert rows["8"][1:5] == ["2", f"{summary.loc['dk=8', 'sdr_mean_mean']:.2f} ± 0.14", "reference", ""]
    shown = differences.set_index(["target", "point"]).loc[("mean", "dk=16")]  # checked above against the hand values
    assert rows["16"][3] == f"{shown['median_difference']:+.2f} [{shown['ci_low']:+.2f}, {shown['ci_high']:+.2f}]"
    assert rows["16"][4] == f"{2 * p16:.3f} *"
    assert rows["32"][4] == f"{p32:.3f}" and rows["16"][7:] == ["16,000", "0.00625"]
    header = next(line for line in markdown.splitlines() if re.match(r"\| *dk *\|", line))
    assert cells(header) == [
        "dk",
        "seeds",
        "SDR (museval)",
        "difference vs reference [95% CI]",
        "p (Holm)",
        "SDR (MDX)",
        "SI-SDR",
        "parameters",
        "best val loss",
    ]  # fmt: skip  (steps and CPU memory are the same for every point: not shown; they are in points.csv)
    assert "nan" not in markdown.lower() and "## All points together" in markdown
    assert (out / "sdr.png").read_bytes()[:8] == PNG and (out / "tracks.png").read_bytes()[:8] == PNG

    # The study's MLflow run, in the study's experiment: its tables, figures and description.
    experiment = client.get_experiment_by_name(STUDY)
    [run] = client.search_runs([experiment.experiment_id], f"tags.{STUDY_TAG} = '{STUDY}'")
    assert run.data.tags["mlflow.note.content"] == markdown and run.data.tags["reference"] == "dk=8"
    assert run.data.metrics["friedman_p_mean"] == pytest.approx(math.exp(-6)) and run.data.metrics["points_done"] == 3
    files = {f.path for f in client.list_artifacts(run.info.run_id, "comparison")}
    assert {"comparison/summary.md", "comparison/sdr.png", "comparison/tracks.png", "comparison/summary.csv"} <= files
    table = client.load_table(experiment.experiment_id, "tables/summary.json", run_ids=[run.info.run_id])
    assert table["point"].tolist() == ["dk=8", "dk=16", "dk=32"]

    # A second comparison (another reference) updates the same run: tables replaced, not appended.
    study_file = write_study(study_repo, [1, 2], reference="dk=16")
    assert main(["ablate", str(study_file), "--compare-only"]) == 0
    [run] = client.search_runs([experiment.experiment_id], f"tags.{STUDY_TAG} = '{STUDY}'")
    assert run.data.tags["reference"] == "dk=16"
    table = client.load_table(experiment.experiment_id, "tables/differences.json", run_ids=[run.info.run_id])
    assert len(table) == 2 * 5 and set(table["reference"]) == {"dk=16"}


def test_one_training_seed_is_flagged_and_no_spread_is_shown(study_repo, monkeypatch):
    in_repo(monkeypatch, study_repo)
    study = load_study(write_study(study_repo, [1], name=STUDY))
    paths = compare_study(study_repo, study, study_repo / "one-seed", "ci-one-seed")
    markdown = paths["markdown"].read_text()
    assert f"carry the flag *{ONE_SEED}*" in markdown and f"0.016 * ({ONE_SEED})" in markdown
    assert "±" not in markdown and "seeds" in markdown  # one seed per point: no spread to show
    summary = pd.read_csv(paths["summary"])
    assert not [c for c in summary if c.endswith("_std")] and (summary["seeds"] == 1).all()
    assert summary["note_mean"].tolist()[1:] == [ONE_SEED, ONE_SEED]


def test_points_without_per_track_scores_are_compared_without_statistics(study_repo, monkeypatch):
    """Experiments evaluated before metrics/per_track_sdr.csv existed: the means, and a note why
    there is no paired test (not a failure)."""
    repo = study_repo
    for dk in (8, 16):
        commit_experiment(repo, f"old-dk{dk}", dk, 1, per_track=dk == 16)
    in_repo(monkeypatch, repo)
    study = Study("old", repo / "old.yaml", grid={"model.dk": [8, 16]})
    paths = compare_study(repo, study, repo / "old", "ci-old")
    markdown = paths["markdown"].read_text()
    assert "(paired statistics need per-track scores of two points or more (1 so far).)" in markdown
    assert "difference vs reference" not in markdown and set(rows_by_first_cell(markdown, "8|16")) == {"8", "16"}
    assert sorted(p.name for p in (repo / "old").iterdir()) == [
        "per_track.csv",
        "points.csv",
        "sdr.png",
        "summary.csv",
        "summary.md",
        "tracks.png",
    ]
    assert collect(repo, study)["status"].tolist() == ["done", "done"]


def test_a_study_with_no_finished_point_still_gets_its_tables(study_repo, monkeypatch):
    """Submitted, nothing done yet: the comparison lists every point as missing, and says so."""
    in_repo(monkeypatch, study_repo)
    study = Study("none-yet", study_repo / "none.yaml", grid={"model.dk": [64, 128]})
    paths = compare_study(study_repo, study, study_repo / "none-yet", "ci-none-yet")
    assert pd.read_csv(paths["points"])["status"].tolist() == ["missing", "missing"]
    markdown = paths["markdown"].read_text()
    assert re.search(r"none-yet-dk64 +\| dk=64 +\| missing", markdown), markdown


def test_grid_and_explicit_points_together(study_repo, monkeypatch):
    """A grid beside an explicit point: the point column names the explicit one, the grid column
    keeps its values as given (an explicit point's empty cell must not turn 8 into 8.0), and the
    reference is the explicit point by its name."""
    for dk, seed in itertools.product((8, 16), SEED):
        commit_experiment(study_repo, f"mixed-dk{dk}-s{seed}", dk, seed)
    for seed in SEED:
        commit_experiment(study_repo, f"mixed-wide-s{seed}", 32, seed)
    in_repo(monkeypatch, study_repo)
    path = study_repo / "mixed.yaml"
    path.write_text(
        "study: mixed\ngrid: {model.dk: [8, 16]}\nseeds: [1, 2]\nreference: wide\n"
        "points: [{name: wide, set: {model.dk: 32, model.internal_channels: 32}}]\n"
    )
    paths = compare_study(study_repo, load_study(path), study_repo / "mixed", "ci-mixed")
    markdown = paths["markdown"].read_text()
    rows = rows_by_first_cell(markdown, "dk=8|dk=16|wide")
    assert [cells[:2] for cells in rows.values()] == [["dk=8", "8"], ["dk=16", "16"], ["wide", ""]]
    assert rows["wide"][4] == "reference" and "reference point **wide**" in markdown
    differences = pd.read_csv(paths["differences"]).set_index(["target", "point"])
    assert differences.loc[("mean", "dk=8"), "median_difference"] == pytest.approx(-np.median(DIFFERENCE[32]), abs=1e-4)


# ---------------------------------------------------------------------------------------
# Mean and spread over seeds
GRID = Study("s", Path("s.yaml"), grid={"model.dk": [8, 16], "model.num_tdfs": [4]}, seeds=[1, 2, 3])


def points() -> pd.DataFrame:
    """What ``compare.collect`` reads from the experiments: dk8 has three finished seeds, dk16 two
    (its third is still running: no SDR yet), and no GPU was used (memory column empty)."""
    rows = []
    for dk, seed, value, loss, status in [
        (8, 1, 1.0, 0.30, "done"),
        (8, 2, 2.0, 0.20, "done"),
        (8, 3, 3.0, 0.10, "done"),
        (16, 1, 4.0, 0.05, "done"),
        (16, 2, 6.0, 0.15, "done"),
        (16, 3, None, 0.50, "incomplete"),
    ]:
        rows.append(
            {
                "experiment": f"s-dk{dk}-numtdfs4-s{seed}",
                "point": f"dk={dk}, num_tdfs=4",
                "status": status,
                "model.dk": dk,
                "model.num_tdfs": 4,
                "train.seed": seed,
                "param_count": 1000 * dk,
                "peak_gpu_mem_gb": math.nan,
                "best_val_loss": loss,
                "sdr_vocals": None if value is None else value + 1,
                "sdr_mean": value,
                "mlflow_run_id": f"run{dk}{seed}",
            }
        )
    return pd.DataFrame(rows)


def test_mean_and_std_over_seeds_per_point():
    summary = aggregate(points(), GRID).set_index("point")
    assert list(summary.index) == ["dk=8, num_tdfs=4", "dk=16, num_tdfs=4"]
    assert summary["model.dk"].tolist() == [8, 16] and summary["model.num_tdfs"].tolist() == [4, 4]
    assert summary["seeds"].tolist() == [3, 2]  # the unfinished seed is left out
    summary = summary.set_index("model.dk")
    assert summary.loc[8, "sdr_mean_mean"] == pytest.approx(2.0)
    assert summary.loc[8, "sdr_mean_std"] == pytest.approx(1.0)  # sample std (ddof 1) of 1, 2, 3
    assert summary.loc[16, "sdr_mean_mean"] == pytest.approx(5.0)
    assert summary.loc[16, "sdr_mean_std"] == pytest.approx(math.sqrt(2))
    assert summary.loc[16, "sdr_vocals_mean"] == pytest.approx(6.0)
    assert summary.loc[8, "best_val_loss_mean"] == pytest.approx(0.2)
    assert summary.loc[16, "best_val_loss_mean"] == pytest.approx(0.1)  # not the unfinished 0.5
    assert summary.loc[16, "param_count_std"] == 0
    assert not any(c.startswith("peak_gpu_mem_gb") for c in summary)  # empty everywhere: no column
    assert "train.seed_mean" not in summary and "experiment" not in summary


def test_explicit_points_are_points_too():
    study = Study("e", Path("e.yaml"), explicit=[Point("wide", {"model.dk": 16}), Point("small", {"model.dk": 8})])
    table = points().assign(point=lambda t: np.where(t["model.dk"] == 8, "small", "wide"))
    summary = aggregate(table, study)
    assert summary["point"].tolist() == ["wide", "small"]  # the study's order
    assert summary["seeds"].tolist() == [2, 3] and summary["sdr_mean_mean"].tolist() == [5.0, 2.0]
