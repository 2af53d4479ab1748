"""The comparison's figures: ``sdr.png`` (each point's SDR and its paired difference against the
reference with the 95% interval, per target) and ``tracks.png`` (per-track SDR of every point
and target as box plots, as the SiSEC 2018 figures show them). Points run top to bottom in the
study's order; every axis says which SDR it is (museval's)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..spectral import TARGETS
from .stats import MEAN, StudyStatistics, seed_average
from .studies import Study

REFERENCE_COLOR, COLOR = "#555555", "#3465a4"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_figures(
    out_dir: Path, study: Study, summary: pd.DataFrame, per_track: pd.DataFrame, stats: StudyStatistics | None
) -> dict[str, Path]:
    """``sdr.png`` always; ``tracks.png`` when some point has per-track scores (else an earlier
    comparison's is removed)."""
    paths = {"plot": out_dir / "sdr.png"}
    plot_sdr(paths["plot"], study, summary, stats)
    tracks = out_dir / "tracks.png"
    if per_track.empty:
        tracks.unlink(missing_ok=True)
    else:
        paths["tracks"] = tracks
        plot_tracks(tracks, study, per_track)
    return paths


def plot_sdr(path: Path, study: Study, summary: pd.DataFrame, stats: StudyStatistics | None) -> None:
    """Left: museval's SDR of each point (mean over targets and seeds; bars: standard deviation
    over seeds). Then, per target, the median per-track difference against the reference with its
    95% bootstrap interval; filled: Holm-adjusted p < 0.05."""
    plt = _pyplot()
    targets = [] if stats is None else sorted(stats.targets, key=lambda t: t != MEAN)  # the mean first
    points = list(summary["point"]) if not summary.empty else []
    y = np.arange(len(points))[::-1]
    fig, axes = plt.subplots(
        1, 1 + len(targets), figsize=(3.4 * (1 + len(targets)) + 1.5, 0.42 * len(points) + 1.9), squeeze=False,
        sharey=True,
    )  # fmt: skip
    axes = axes[0]
    if not points:
        axes[0].text(0.5, 0.5, "no finished points", ha="center", transform=axes[0].transAxes)
    elif "sdr_mean_mean" in summary:
        std = summary["sdr_mean_std"].fillna(0) if "sdr_mean_std" in summary else None
        axes[0].errorbar(summary["sdr_mean_mean"], y, xerr=std, fmt="o", color=COLOR, capsize=3)
        axes[0].set_xlabel("SDR (museval), mean over targets (dB)")
    axes[0].set_yticks(y, points, fontsize=8)
    for ax, target in zip(axes[1:], targets):
        rows = stats.differences[stats.differences["target"] == target].set_index("point")
        for yi, point in zip(y, points):
            if point == stats.reference:
                ax.plot([0], [yi], "D", color=REFERENCE_COLOR)
                continue
            if point not in rows.index or pd.isna(rows.loc[point, "median_difference"]):
                continue
            row = rows.loc[point]
            median, low, high = row["median_difference"], row["ci_low"], row["ci_high"]
            xerr = None if pd.isna(low) else [[median - low], [high - median]]
            filled = bool(row["significant"]) if row["significant"] is not None else False
            ax.errorbar([median], [yi], xerr=xerr, fmt="o", color=COLOR, mfc=COLOR if filled else "white", capsize=3)
        ax.axvline(0, color=REFERENCE_COLOR, lw=0.8, ls="--")
        ax.set_xlabel(f"{target}: difference (dB)")
    for ax in axes:
        ax.grid(axis="x", alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    title = f"{study.name}: SDR (museval)"
    if stats is not None:
        title += (
            f"; per-track difference vs {stats.reference} (◆): median, 95% bootstrap interval, "
            "filled where Holm p < 0.05"
        )
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_tracks(path: Path, study: Study, per_track: pd.DataFrame) -> None:
    """Per target, a box plot per point of museval's per-track SDR (each point's seeds averaged per
    track), every track drawn as a dot."""
    plt = _pyplot()
    scores = per_track.rename(columns={"experiment": "seed"})[["point", "seed", "track", "target", "sdr"]]
    averaged = seed_average(scores)
    points = [label for label in study.labels() if label in set(averaged["point"])]
    targets = [t for t in (*TARGETS, MEAN) if t in set(averaged["target"])]
    y = np.arange(len(points))[::-1]
    fig, axes = plt.subplots(
        1, len(targets), figsize=(3.2 * len(targets) + 1.5, 0.45 * len(points) + 1.9), squeeze=False, sharey=True
    )
    rng = np.random.default_rng(0)  # the dots' jitter: the same figure every time
    for ax, target in zip(axes[0], targets):
        rows = averaged[averaged["target"] == target]
        data = [rows.loc[rows["point"] == p, "sdr"].to_numpy() for p in points]
        ax.boxplot(data, positions=y, orientation="horizontal", widths=0.6, showfliers=False,
                   medianprops={"color": COLOR})  # fmt: skip
        for yi, values in zip(y, data):
            ax.plot(values, yi + rng.uniform(-0.18, 0.18, len(values)), ".", color=REFERENCE_COLOR, alpha=0.5, ms=4)
        ax.set_xlabel(f"{target}: SDR (museval, dB)")
        ax.grid(axis="x", alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    axes[0][0].set_yticks(y, points, fontsize=8)
    fig.suptitle(f"{study.name}: per-track SDR (museval, median over frames; dots: tracks)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
