"""The comparison's tables: the full data as csv, and ``summary.md`` for people to read.

``summary.md`` shows what carries information: grid values as the study file gives them, mean
(± standard deviation over seeds, where there are several) of each SDR, the paired difference
against the reference point with its interval and Holm-adjusted p-value, and the training
figures that differ between points. Every column says which SDR it is. The csv files hold
everything: ``points.csv`` (one row per experiment), ``summary.csv`` (one row per point: means,
standard deviations, and the paired statistics per target), ``per_track.csv``,
``differences.csv``, ``friedman.csv`` and ``conover.csv`` (the statistics in long form).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..spectral import TARGETS
from .stats import DIFFERENCE_COLUMN, MEAN, ONE_SEED, P_COLUMN, StudyStatistics, summary_columns
from .studies import Study, display

SDR_LABELS = {"sdr": "SDR (museval)", "sdr_mdx": "SDR (MDX)", "si_sdr": "SI-SDR"}
TRAINING_LABELS = {
    "param_count": ("parameters", "{:,.0f}"),
    "best_val_loss": ("best val loss", "{:.4g}"),
    "peak_gpu_mem_gb": ("peak GPU memory (GB)", "{:.2f}"),
    "peak_cpu_rss_gb": ("peak CPU memory (GB)", "{:.2f}"),
    "steps": ("steps", "{:,.0f}"),
}
SPREAD = "Test scores in dB, mean over a point's seeds (± their standard deviation where there are several)."
LEGEND = """Three SDRs, computed differently and not comparable with each other: **SDR (museval)**, the headline, is
museval's BSSEval v4 SDR (median over 1 s frames, then over tracks; SiSEC 2018); **SDR (MDX)** is the
MDX 2021 challenge's SDR (whole track, mean over tracks); **SI-SDR** the scale-invariant SDR (whole track,
per channel, mean over tracks; Le Roux et al. 2019). The mean is over the four targets."""
PAIRED = """Paired against the reference point **{reference}**, on museval's per-track SDR (each point's seeds
averaged per track first): *{difference}* is the median over tracks of the per-track difference
(point − reference) with its 95% bootstrap interval; *{p}* the Wilcoxon signed-rank test of those
differences, Holm-adjusted within each target; `*` marks p < 0.05. These tests take the tracks as the
sample: they say whether these trained models differ on these songs, not whether one configuration
beats the other across trainings; the spread over seeds shows the training noise they do not see."""


TEXT_COLUMNS = {"point", "target", "experiment", "status", "note"}  # left-aligned; figures are right-aligned


def _markdown(frame: pd.DataFrame) -> str:
    """A table of formatted strings, as they are (no number parsing: ``32`` stays ``32``)."""
    align = ["left" if c in TEXT_COLUMNS else "right" for c in frame.columns]
    return frame.to_markdown(index=False, disable_numparse=True, colalign=align)


def _cell(value, spec: str = "{:.2f}") -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else spec.format(value)


def _mean_std(row: pd.Series, column: str) -> str:
    mean, std = row.get(f"{column}_mean"), row.get(f"{column}_std")
    text = _cell(mean)
    if text and std is not None and not pd.isna(std):
        text += f" ± {std:.2f}"
    return text


def _varies(summary: pd.DataFrame, column: str) -> bool:
    """A figure worth a column: known for some point, and different between points (or one point)."""
    values = summary.get(column, pd.Series(dtype=float)).dropna()
    return not values.empty and (len(summary) == 1 or values.nunique() > 1)


def point_columns(study: Study, summary: pd.DataFrame) -> pd.DataFrame:
    """How the tables name a point: its grid values as given (one column per grid key), and its
    name where it is not a grid point."""
    grid_points = [label for label in summary["point"] if study.grid_values(label)]
    out = pd.DataFrame(index=summary.index)
    if len(grid_points) < len(summary) or not study.grid:
        out["point"] = summary["point"]
    short = [key.split(".")[-1] for key in study.grid]
    values = [study.grid_values(label) for label in summary["point"]]  # as given: not through a float column
    for key, name in zip(study.grid, short):
        out[name if short.count(name) == 1 else key] = [display(v[key]) if v else "" for v in values]
    return out


def points_markdown(study: Study, summary: pd.DataFrame, stats: StudyStatistics | None) -> str:
    """One row per point: its name or grid values, seeds, the SDRs (mean over targets), the paired
    difference against the reference, and the training figures that differ between points."""
    shown = point_columns(study, summary)
    if study.seeds:
        shown["seeds"] = summary["seeds"].astype(str)
    target = MEAN if stats is None or MEAN in stats.targets else stats.targets[0]
    suffix = "" if target == MEAN else f"_{target}"
    for kind, label in SDR_LABELS.items():
        column = f"{kind}_mean" if not suffix else f"{kind}{suffix}"
        if f"{column}_mean" in summary:
            shown[label] = [_mean_std(row, column) for _, row in summary.iterrows()]
        if kind == "sdr" and stats is not None:
            paired = summary_columns(stats, target).reindex(summary["point"])
            shown[DIFFERENCE_COLUMN] = paired[DIFFERENCE_COLUMN].fillna("n/a: no per-track scores").to_numpy()
            shown[P_COLUMN] = paired[P_COLUMN].fillna("").to_numpy()
    for column, (label, spec) in TRAINING_LABELS.items():
        if _varies(summary, f"{column}_mean"):
            shown[label] = [_cell(v, spec) for v in summary[f"{column}_mean"]]
    return _markdown(shown)


def targets_markdown(study: Study, summary: pd.DataFrame, stats: StudyStatistics | None) -> str:
    """Per target and point: each SDR, and museval's paired difference against the reference."""
    rows = []
    names = point_columns(study, summary)
    for target in TARGETS:
        if f"sdr_{target}_mean" not in summary:
            continue
        paired = summary_columns(stats, target) if stats is not None and target in stats.targets else None
        for i, row in summary.iterrows():
            line = {"target": target, **names.loc[i].to_dict()}
            for kind, label in SDR_LABELS.items():
                if f"{kind}_{target}_mean" in summary:
                    line[label] = _mean_std(row, f"{kind}_{target}")
                if kind == "sdr" and paired is not None:
                    found = paired.loc[row["point"]] if row["point"] in paired.index else None
                    line[DIFFERENCE_COLUMN] = "n/a: no per-track scores" if found is None else found[DIFFERENCE_COLUMN]
                    line[P_COLUMN] = "" if found is None else found[P_COLUMN]
            rows.append(line)
    return _markdown(pd.DataFrame(rows)) if rows else ""


def _p(value: float) -> str:
    return "" if pd.isna(value) else "<0.001" if value < 0.001 else f"{value:.3f}"


def friedman_markdown(stats: StudyStatistics) -> str:
    """The Friedman test per target, and the paired Conover matrix of the mean over targets."""
    table = stats.friedman.assign(
        statistic=[_cell(v) for v in stats.friedman["statistic"]], p_value=[_p(v) for v in stats.friedman["p_value"]]
    ).rename(columns={"statistic": "Friedman χ²", "p_value": "p"})
    text = _markdown(table)
    target = MEAN if MEAN in stats.conover else next(iter(stats.conover), None)
    if target is not None:
        matrix = stats.conover[target].map(_p)
        for point in matrix.index:
            matrix.loc[point, point] = "–"
        text += (
            f"\n\nPaired Conover post-hoc tests after the Friedman test (`posthoc_conover_friedman`, Holm-adjusted p), "
            f"target {target}; read them only where the Friedman test rejects:\n\n" + _markdown(matrix.reset_index())
        )
    return text


def experiments_markdown(table: pd.DataFrame) -> str:
    """One row per experiment: its point, seed, status and SDRs (mean over targets)."""
    shown = table[["experiment", "point"]].copy()
    if "train.seed" in table:
        shown["seed"] = ["" if pd.isna(v) else str(int(v)) for v in table["train.seed"]]  # integers (validated)
    shown["status"] = table["status"]
    for kind, label in SDR_LABELS.items():
        if f"{kind}_mean" in table and table[f"{kind}_mean"].notna().any():
            shown[label] = [_cell(v) for v in table[f"{kind}_mean"]]
    return _markdown(shown)


def markdown(
    study: Study,
    table: pd.DataFrame,
    summary: pd.DataFrame,
    stats: StudyStatistics | None,
    why: str,
    files: Sequence[str] = (),
) -> str:
    """``summary.md``: legend, points, per target, the Friedman test (3 points or more), experiments."""
    spread = not summary.empty and (summary["seeds"] > 1).any()
    parts = [f"# Study `{study.name}`", (SPREAD if spread else "Test scores in dB.") + "\n" + LEGEND]
    if stats is not None:
        parts.append(PAIRED.format(reference=stats.reference, difference=DIFFERENCE_COLUMN, p=P_COLUMN))
        if min(stats.seeds.values()) == 1:
            parts.append(
                f"Points with one training seed: their p-values carry the flag *{ONE_SEED}*. They see the "
                "noise between tracks only; nothing here shows how much another training of the same configuration "
                "would move the point."
            )
    elif why:
        parts.append(f"({why}.)")
    if summary.empty:
        parts.append("No point has finished yet.")
    else:
        parts += ["## Points (mean over targets)", points_markdown(study, summary, stats)]
        parts += ["## Per target", targets_markdown(study, summary, stats)]
    if stats is not None and len(stats.points) >= 3:
        parts += ["## All points together (tracks as blocks)", friedman_markdown(stats)]
    parts += ["## Experiments", experiments_markdown(table)]
    parts.append(f"Full data: {', '.join(files)}.")
    return "\n\n".join(parts) + "\n"


def summary_table(summary: pd.DataFrame, stats: StudyStatistics | None) -> pd.DataFrame:
    """``summary.csv``: the per-point means and standard deviations, then per target the paired
    statistics against the reference (empty for the reference itself)."""
    out = summary.copy()
    if stats is None:
        return out
    out.insert(1, "reference", out["point"] == stats.reference)
    for target in stats.targets:
        rows = stats.differences[stats.differences["target"] == target].set_index("point")
        for field, name in (
            ("median_difference", "difference"), ("ci_low", "ci_low"), ("ci_high", "ci_high"),
            ("p_holm", "p_holm"), ("significant", "significant"), ("tracks", "tracks"), ("note", "note"),
        ):  # fmt: skip
            out[f"{name}_{target}"] = out["point"].map(rows[field]).to_numpy()
    return out


def write_tables(
    out_dir: Path, table: pd.DataFrame, summary: pd.DataFrame, per_track: pd.DataFrame, stats: StudyStatistics | None
) -> dict[str, Path]:
    """The csv files in ``out_dir`` (those this comparison has data for); returns them by kind."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"points": out_dir / "points.csv", "summary": out_dir / "summary.csv"}
    table.to_csv(paths["points"], index=False)
    summary_table(summary, stats).to_csv(paths["summary"], index=False)
    stale = ["per_track", "differences", "friedman", "conover"]
    if not per_track.empty:
        paths["per_track"] = out_dir / "per_track.csv"
        per_track.to_csv(paths["per_track"], index=False, float_format="%.5f")
    if stats is not None:
        for name, frame in (("differences", stats.differences), ("friedman", stats.friedman)):
            paths[name] = out_dir / f"{name}.csv"
            frame.to_csv(paths[name], index=False)
        conover = [
            matrix.stack().rename("p_holm").rename_axis(["point", "versus"]).reset_index().assign(target=target)
            for target, matrix in stats.conover.items()
        ]
        if conover:
            paths["conover"] = out_dir / "conover.csv"
            pd.concat(conover)[["target", "point", "versus", "p_holm"]].to_csv(paths["conover"], index=False)
    for name in stale:  # an earlier comparison's file that this one has no data for
        if name not in paths:
            (out_dir / f"{name}.csv").unlink(missing_ok=True)
    return paths
