"""Score tables: museval's per-frame scores and the whole-track SDR variants in long form, their
summary, and the files the evaluate stage writes (the report and the study comparison read them back).

``scores.csv`` holds one row per track/target/metric/frame/kind: museval's ``SDR``, ``SIR``,
``ISR``, ``SAR`` per 1 s frame, and the whole-track variants (:mod:`.sdr_variants`) ``SDR_MDX`` and
``SI_SDR`` with an empty frame. ``summary.csv`` aggregates each as its convention does: museval's
the median over frames, then over tracks (SiSEC 2018); the variants the mean over tracks (MDX
2021); per target and metric, with the baseline (the mixture as the estimate), the improvement
and a ``definition`` column saying which SDR a row is. ``sdr_<target>`` always means museval's.
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

METRICS = ("SDR", "SIR", "ISR", "SAR")  # museval's, per frame
VARIANTS = {"SDR_MDX": "sdr_mdx", "SI_SDR": "si_sdr"}  # whole-track metric -> key prefix (sdr_variants)
BSSEVAL = "museval BSSEval v4 (SiSEC 2018): median over 1 s frames, then over tracks"
DEFINITIONS = {
    **dict.fromkeys(METRICS, BSSEVAL),
    "SDR_MDX": "MDX 2021 challenge SDR: whole track, mean over tracks",
    "SI_SDR": "scale-invariant SDR (Le Roux et al. 2019): whole track, per channel, mean over tracks",
}
SCORE_COLUMNS = ("track", "target", "metric", "frame", "value", "kind")
TRACK_COLUMNS = ("track", "target", "sdr", "sdr_mdx", "si_sdr")  # metrics/per_track_sdr.csv
CLIPPED_CSV = "clipped.csv"  # in results/scores: track, target, clipped (samples of the 16-bit estimate)
NOISE_DB = 150.0  # SIR/ISR/SAR above this are rounding noise: a residual at float precision, not a score
KINDS = ("estimate", "baseline")  # scores.csv `kind`: the model's estimates / the mixture as estimate


class EvaluationError(LightSAFTError, RuntimeError):
    """Estimates are missing or do not match their references, or some tracks failed."""


@dataclass
class EvaluationResult:
    """``scores``: long table, one row per track/target/metric/frame/kind. ``summary``: per target
    and metric (:func:`summarize`: museval's median over frames then tracks, the variants' mean
    over tracks), with baseline, improvement and definition (plus ``mean`` rows). ``metrics``: flat
    dict for ``metrics/sdr.json``. ``failed``: track -> why."""

    scores: pd.DataFrame
    summary: pd.DataFrame
    metrics: dict[str, float]
    failed: dict[str, str] = field(default_factory=dict)
    museval_json: dict[str, str] = field(default_factory=dict)  # track -> museval's JSON of its estimates
    clipped: pd.DataFrame | None = None  # track, target, clipped (samples); None: the estimates say nothing

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


def variant_rows(track: str, variants: dict[str, float], kind: str) -> list[tuple]:
    """Long-format rows of :func:`sdr_variants.score_track`'s ``sdr_mdx_<target>`` / ``si_sdr_<target>``
    (frame: none, the whole track); its ``_mean`` keys are left out (the summary recomputes them)."""
    rows = []
    for metric, prefix in VARIANTS.items():
        for key, value in variants.items():
            target = key.removeprefix(f"{prefix}_")
            if key.startswith(f"{prefix}_") and target != "mean":
                rows.append((track, target, metric, pd.NA, float(value), kind))
    return rows


def score_table(rows: list[tuple]) -> pd.DataFrame:
    """``scores.csv``'s table; ``frame`` is an integer column, empty for whole-track rows."""
    table = pd.DataFrame(rows, columns=list(SCORE_COLUMNS))
    table["frame"] = table["frame"].astype("Int64")
    return table


def summarize(scores: pd.DataFrame, targets: Sequence[str] = TARGETS) -> tuple[pd.DataFrame, dict[str, float]]:
    """museval's metrics: median over frames, then over tracks (NaN frames skipped, as museval
    aggregates); the whole-track variants (when scored): mean over tracks. Per target and metric,
    with baseline, improvement and definition columns; ``mean`` rows: the mean over targets of
    each SDR."""
    frames = scores[scores["metric"].isin(METRICS)]
    per_track = frames.groupby(["kind", "target", "metric", "track"])["value"].median()
    parts = [per_track.groupby(level=["kind", "target", "metric"]).median()]
    variants = [m for m in VARIANTS if (scores["metric"] == m).any()]
    whole = scores[scores["metric"].isin(variants)]
    parts.append(whole.groupby(["kind", "target", "metric"])["value"].mean())
    table = pd.concat(parts).unstack("kind")
    metrics_order = [*METRICS, *variants]
    index = pd.MultiIndex.from_product([list(targets), metrics_order], names=["target", "metric"])
    table = table.reindex(index=index, columns=list(KINDS))
    table["improvement"] = table["estimate"] - table["baseline"]
    for metric in ("SDR", *variants):
        table.loc[("mean", metric), :] = table.xs(metric, level="metric").mean(skipna=False)
    summary = table.reset_index()
    summary.columns.name = None
    summary["definition"] = summary["metric"].map(DEFINITIONS)
    metrics = {"tracks": float(scores["track"].nunique())}
    sdr = summary[summary["metric"] == "SDR"].set_index("target")
    for column, prefix in (("estimate", "sdr"), ("baseline", "baseline_sdr"), ("improvement", "sdr_improvement")):
        metrics.update({f"{prefix}_{target}": float(value) for target, value in sdr[column].items()})
    for metric in variants:
        rows = summary[summary["metric"] == metric].set_index("target")["estimate"]
        metrics.update({f"{VARIANTS[metric]}_{target}": float(value) for target, value in rows.items()})
    return summary, metrics


def track_table(scores: pd.DataFrame, kind: str = "estimate") -> pd.DataFrame:
    """Per track and target (columns :data:`TRACK_COLUMNS`): museval's SDR (median over frames,
    NaN frames skipped) and the whole-track variants, of ``kind``'s scores; tracks in scoring order."""
    rows = scores[scores["kind"] == kind]
    sdr = rows[rows["metric"] == "SDR"].groupby(["track", "target"], sort=False)["value"].median().rename("sdr")
    whole = rows[rows["metric"].isin(list(VARIANTS))]
    wide = whole.pivot_table(index=["track", "target"], columns="metric", values="value", sort=False)
    wide = wide.rename(columns=VARIANTS).reindex(columns=list(VARIANTS.values()))
    table = pd.concat([sdr, wide], axis=1).reset_index()
    return table[list(TRACK_COLUMNS)]


def write_scores(result: EvaluationResult, out_dir: str | Path) -> Path:
    """``museval/test/<track>.json`` (museval's format and layout, so sigsep's
    ``MethodStore.add_eval_dir(out_dir / "museval")`` reads it), ``scores.csv``, ``summary.csv``
    and, when the separate stage counted them, ``clipped.csv`` (track, target, clipped samples),
    replacing ``out_dir`` as a whole."""
    with atomic_dir(out_dir) as tmp:
        (tmp / "museval" / "test").mkdir(parents=True)
        for track, text in result.museval_json.items():
            (tmp / "museval" / "test" / f"{track}.json").write_text(text)
        result.scores.to_csv(tmp / "scores.csv", index=False, float_format="%.5f")
        result.summary.to_csv(tmp / "summary.csv", index=False, float_format="%.5f")
        if result.clipped is not None:
            result.clipped.to_csv(tmp / CLIPPED_CSV, index=False)
    return Path(out_dir)


def write_track_table(path: str | Path, scores: pd.DataFrame) -> None:
    """``metrics/per_track_sdr.csv`` (:func:`track_table` of the estimates): small and git-tracked,
    so that a study comparison reads every point's per-track scores from its experiment's commit."""
    with atomic_path(path) as tmp:
        track_table(scores).to_csv(tmp, index=False, float_format="%.5f")


def readable(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary as people read it: SIR/ISR/SAR above :data:`NOISE_DB` (typically the mixture
    baseline, which lies in the span of the references, so its residuals are rounding noise) and
    their improvements shown as ``-``; SDR and every stored value untouched; no definition column
    (:data:`DEFINITIONS`: print them once)."""
    shown = summary.drop(columns="definition", errors="ignore").astype(object)
    noise = summary[["estimate", "baseline"]].gt(NOISE_DB).mul(summary["metric"].isin(METRICS[1:]), axis=0)
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
    """museval's SDR per track and target: the median over frames (NaN frames skipped); one column per kind."""
    sdr = scores[scores["metric"] == "SDR"]
    return sdr.groupby(["track", "target", "kind"])["value"].median().unstack("kind")


def write_sdr_plot(path: str | Path, summary: pd.DataFrame) -> None:
    """``plots/sdr_per_target.csv`` for ``dvc plots``: target, sdr, baseline_sdr (median dB)."""
    rows = summary[(summary["metric"] == "SDR") & (summary["target"] != "mean")]
    table = rows.rename(columns={"estimate": "sdr", "baseline": "baseline_sdr"})[["target", "sdr", "baseline_sdr"]]
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.5f")
