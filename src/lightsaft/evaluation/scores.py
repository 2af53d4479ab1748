"""Score tables: museval's per-frame scores in long form, their summary, and the files the
evaluate stage writes (the report and the study comparison read them back).

``scores.csv`` holds one row per track/target/metric/frame/kind; ``summary.csv`` the median over
frames, then over tracks, per target and metric, with the baseline (the mixture as the estimate)
and the improvement.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..errors import LightSAFTError
from ..paths import atomic_dir, atomic_path, write_text_atomic
from ..spectral import TARGETS

METRICS = ("SDR", "SIR", "ISR", "SAR")
NOISE_DB = 150.0  # SIR/ISR/SAR above this are rounding noise: a residual at float precision, not a score
KINDS = ("estimate", "baseline")  # scores.csv `kind`: the model's estimates / the mixture as estimate


class EvaluationError(LightSAFTError, RuntimeError):
    """Estimates are missing or do not match their references, or some tracks failed."""


@dataclass
class EvaluationResult:
    """``scores``: long table, one row per track/target/metric/frame/kind. ``summary``: median
    over frames then over tracks, per target and metric, with baseline and improvement (plus a
    ``mean`` SDR row). ``metrics``: flat dict for ``metrics/sdr.json``. ``failed``: track -> why."""

    scores: pd.DataFrame
    summary: pd.DataFrame
    metrics: dict[str, float]
    failed: dict[str, str] = field(default_factory=dict)
    museval_json: dict[str, str] = field(default_factory=dict)  # track -> museval's JSON of its estimates

    def check(self) -> None:
        """Raise EvaluationError naming the failed tracks (the others' scores are already written)."""
        if self.failed:
            total = self.scores["track"].nunique() + len(self.failed)
            raise EvaluationError(failure_message(self.failed, total))


def score_rows(track: str, museval_json: str, kind: str) -> list[tuple]:
    """Long-format rows ``(track, target, metric, frame, value, kind)`` of one museval JSON."""
    data = json.loads(museval_json)  # museval writes NaN for silent frames; json reads it back
    return [
        (track, target["name"], metric, i, float(frame["metrics"][metric]), kind)
        for target in data["targets"]
        for metric in METRICS
        for i, frame in enumerate(target["frames"])
    ]


def summarize(scores: pd.DataFrame, targets: Sequence[str] = TARGETS) -> tuple[pd.DataFrame, dict[str, float]]:
    """Median over frames, then over tracks (NaN frames skipped, as museval aggregates), per
    target and metric; baseline and improvement columns; a ``mean`` row: the mean target SDR."""
    per_track = scores.groupby(["kind", "target", "metric", "track"])["value"].median()
    table = per_track.groupby(level=["kind", "target", "metric"]).median().unstack("kind")
    table = table.reindex(
        index=pd.MultiIndex.from_product([list(targets), METRICS], names=["target", "metric"]), columns=list(KINDS)
    )
    table["improvement"] = table["estimate"] - table["baseline"]
    table.loc[("mean", "SDR"), :] = table.xs("SDR", level="metric").mean(skipna=False)
    summary = table.reset_index()
    summary.columns.name = None
    metrics = {"tracks": float(scores["track"].nunique())}
    sdr = summary[summary["metric"] == "SDR"].set_index("target")
    for column, prefix in (("estimate", "sdr"), ("baseline", "baseline_sdr"), ("improvement", "sdr_improvement")):
        metrics.update({f"{prefix}_{target}": float(value) for target, value in sdr[column].items()})
    return summary, metrics


def write_scores(result: EvaluationResult, out_dir: str | Path) -> Path:
    """``museval/test/<track>.json`` (museval's format and layout, so sigsep's
    ``MethodStore.add_eval_dir(out_dir / "museval")`` reads it), ``scores.csv`` and ``summary.csv``,
    replacing ``out_dir`` as a whole."""
    with atomic_dir(out_dir) as tmp:
        (tmp / "museval" / "test").mkdir(parents=True)
        for track, text in result.museval_json.items():
            (tmp / "museval" / "test" / f"{track}.json").write_text(text)
        result.scores.to_csv(tmp / "scores.csv", index=False, float_format="%.5f")
        result.summary.to_csv(tmp / "summary.csv", index=False, float_format="%.5f")
    return Path(out_dir)


def readable(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary as people read it: SIR/ISR/SAR above :data:`NOISE_DB` (typically the mixture
    baseline, which lies in the span of the references, so its residuals are rounding noise) and
    their improvements shown as ``-``; SDR and every stored value untouched."""
    shown = summary.astype(object)
    noise = summary[["estimate", "baseline"]].gt(NOISE_DB).mul(summary["metric"] != "SDR", axis=0)
    for kind in ("estimate", "baseline"):
        shown.loc[noise[kind], kind] = "-"
    shown.loc[noise.any(axis=1), "improvement"] = "-"
    return shown.map(lambda v: f"{v:.3f}" if isinstance(v, float) else v)


def failure_message(failed: dict[str, str], total: int) -> str:
    return f"evaluation failed for {len(failed)} of {total} track(s): " + "; ".join(
        f"{track!r}: {why}" for track, why in failed.items()
    )


def write_metrics(path: str | Path, metrics: dict[str, float]) -> None:
    """``metrics/sdr.json`` for DVC (NaN, e.g. a target silent in every frame, becomes null)."""
    clean = {key: None if math.isnan(value) else round(value, 5) for key, value in metrics.items()}
    write_text_atomic(path, json.dumps(clean, indent=2) + "\n")


def per_track_sdr(scores: pd.DataFrame) -> pd.DataFrame:
    """Median SDR over frames (NaN frames skipped) per track and target; one column per kind."""
    sdr = scores[scores["metric"] == "SDR"]
    return sdr.groupby(["track", "target", "kind"])["value"].median().unstack("kind")


def write_sdr_plot(path: str | Path, summary: pd.DataFrame) -> None:
    """``plots/sdr_per_target.csv`` for ``dvc plots``: target, sdr, baseline_sdr (median dB)."""
    rows = summary[(summary["metric"] == "SDR") & (summary["target"] != "mean")]
    table = rows.rename(columns={"estimate": "sdr", "baseline": "baseline_sdr"})[["target", "sdr", "baseline_sdr"]]
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.5f")
