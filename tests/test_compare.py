"""Comparing the points of a study: mean and spread over seeds per grid point, the files written.
(The whole chain, from queued experiments to these tables, runs in test_pipeline.)"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from lightsaft.study.compare import aggregate, write_comparison
from lightsaft.study.studies import Study

STUDY = Study("s", Path("s.yaml"), grid={"model.dk": [8, 16], "model.num_tdfs": [4]}, seeds=[1, 2, 3])
PNG = b"\x89PNG\r\n\x1a\n"


def points() -> pd.DataFrame:
    """What ``compare.collect`` reads from the experiments: dk8 has three finished seeds, dk16 two
    (its third is still running: no SDR yet), and no GPU was used (memory column empty)."""
    rows = []
    for dk, seed, sdr, loss, status in [
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
                "status": status,
                "model.dk": dk,
                "model.num_tdfs": 4,
                "train.seed": seed,
                "param_count": 1000 * dk,
                "peak_gpu_mem_gb": math.nan,
                "best_val_loss": loss,
                "sdr_vocals": None if sdr is None else sdr + 1,
                "sdr_mean": sdr,
                "mlflow_run_id": f"run{dk}{seed}",
            }
        )
    return pd.DataFrame(rows)


def test_mean_and_std_over_seeds_per_grid_point():
    summary = aggregate(points(), STUDY).set_index("model.dk")
    assert list(summary.index) == [8, 16]
    assert summary["seeds"].tolist() == [3, 2]  # the unfinished seed is left out
    assert summary.loc[8, "sdr_mean_mean"] == pytest.approx(2.0)
    assert summary.loc[8, "sdr_mean_std"] == pytest.approx(1.0)  # sample std (ddof 1) of 1, 2, 3
    assert summary.loc[16, "sdr_mean_mean"] == pytest.approx(5.0)
    assert summary.loc[16, "sdr_mean_std"] == pytest.approx(math.sqrt(2))
    assert summary.loc[16, "sdr_vocals_mean"] == pytest.approx(6.0)
    assert summary.loc[8, "best_val_loss_mean"] == pytest.approx(0.2)
    assert summary.loc[16, "best_val_loss_mean"] == pytest.approx(0.1)  # not the unfinished 0.5
    assert summary.loc[16, "param_count_std"] == 0
    assert summary["model.num_tdfs"].tolist() == [4, 4]
    assert not any(c.startswith("peak_gpu_mem_gb") for c in summary)  # empty everywhere: no column
    assert "train.seed_mean" not in summary and "experiment" not in summary


def test_comparison_files(tmp_path):
    table = points()
    paths = write_comparison(table, STUDY, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "points.csv",
        "sdr.png",
        "summary.csv",
        "summary.md",
    ]
    assert set(paths) == {"points", "summary", "markdown", "plot"}
    pd.testing.assert_frame_equal(pd.read_csv(paths["points"]), table, check_dtype=False)
    summary = pd.read_csv(paths["summary"])
    pd.testing.assert_frame_equal(summary, aggregate(table, STUDY), check_dtype=False)
    markdown = paths["markdown"].read_text()
    assert markdown.startswith("# Study `s`")
    assert "## Mean and standard deviation over seeds" in markdown
    assert "s-dk16-numtdfs4-s3" in markdown and "| incomplete |" in markdown
    assert "1.414" in markdown  # the std of dk16, at three decimals
    assert paths["plot"].read_bytes()[:8] == PNG and paths["plot"].stat().st_size > 5000


def test_a_study_with_no_finished_point_still_gets_its_files(tmp_path):
    table = points().assign(status="missing")
    assert aggregate(table, STUDY).empty
    paths = write_comparison(table, STUDY, tmp_path)
    assert pd.read_csv(paths["points"])["status"].tolist() == ["missing"] * 6
    assert paths["plot"].read_bytes()[:8] == PNG
