"""Paired per-track statistics between the points of a study: is a difference more than noise?

Per-track SDRs of two models are strongly paired (the same songs are hard for both), so the
question "is point B better than the reference?" is answered on per-track differences, not by
comparing two medians over tracks with their spread over seeds.

Input: a long table with one row per ``point, seed, track, target`` and the column ``sdr``
(museval's per-track SDR: the median over frames). ``point`` names a study point (e.g. its grid
values), ``seed`` a training seed of it. What :func:`compare_points` does, in this order:

1. Seeds are averaged within (point, track, target). A track counts for a point and target only
   when every seed of that point scored it (finite SDR), so that each point averages the same
   seeds on every track. The ``mean`` target is, per track, the mean of the targets (a track
   needs all of them).
2. Each point is paired with the reference point (default: the first point of the table) on
   their common tracks, per target and for ``mean``. For each pair: the median per-track
   difference (point - reference, dB) with its 95% percentile bootstrap interval over tracks
   (10,000 resamples, fixed seed: a comparison is reproducible; the intervals are per
   comparison, not adjusted) and the Wilcoxon signed-rank p-value (``scipy.stats.wilcoxon``),
   Holm-adjusted within each target's family (all points against the reference;
   ``statsmodels``' ``multipletests``). ``significant``: Holm p < 0.05.
3. Across all points, per target, on the tracks common to all of them: the Friedman test with
   tracks as blocks (``scipy.stats.friedmanchisquare``; needs 3 points or more) and the paired
   Conover post-hoc matrix that follows it (``scikit_posthocs.posthoc_conover_friedman``,
   Holm-adjusted). The matrix is given even when the Friedman test is not significant; read it
   only when it is.

Fewer than 5 common tracks: no interval and no p-value, and the ``note`` says why.
What the tests see: tracks are the random sample, so they say whether these trained models
differ on these songs. Training noise (a model's offset from seed to seed) is not in them,
whatever the number of seeds: averaging seeds shrinks it, and the study table's spread over seeds
shows it. With a single training seed for a point (or its reference) nothing shows it, and the
p-value carries the ``one training seed`` flag. (benchmarks/stats_calibration.py: with a seed
offset of 0.1 dB beside 0.3 dB of per-track noise, two equal configurations differ "significantly"
in about 40% of studies, with one seed or three.)

For the comparison writer (summary.md / summary.csv)::

    stats = compare_points(scores, reference="dk=32")
    stats.differences          # one row per (point, target): the csv columns (DIFFERENCE_FIELDS)
    summary_columns(stats)     # per point: "difference vs reference [95% CI]", "p (Holm)" (mean target)
    summary_columns(stats, "vocals")
    stats.friedman             # one row per target: points, tracks, statistic, p_value, note
    stats.conover["mean"]      # points x points, Holm-adjusted p
    stats.per_track            # seed-averaged SDR per point, track and target: the box plot's data
"""

from __future__ import annotations

import gc
import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scikit_posthocs
from scipy import stats as scipy_stats
from statsmodels.stats.multitest import multipletests

from ..errors import LightSAFTError

COLUMNS = ("point", "seed", "track", "target", "sdr")
MEAN = "mean"  # the pseudo-target: per track, the mean over the targets
MIN_TRACKS = 5  # fewer common tracks: no interval, no p-value
RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
LEVEL = 0.95  # of the bootstrap interval
ALPHA = 0.05  # Holm-adjusted p below this: significant
ONE_SEED = "one training seed"
DIFFERENCE_COLUMN = "difference vs reference [95% CI]"
P_COLUMN = "p (Holm)"
DIFFERENCE_FIELDS = (
    "point", "reference", "target", "tracks", "seeds", "reference_seeds", "median_difference", "ci_low",
    "ci_high", "mean_difference", "p_wilcoxon", "p_holm", "significant", "note",
)  # fmt: skip


class StatsError(LightSAFTError, ValueError):
    """The per-track scores cannot be compared as given."""


@dataclass(frozen=True)
class PairedDifference:
    """Point minus reference on their common tracks, for one target (dB). NaN where not computed."""

    tracks: int
    median: float
    mean: float
    ci_low: float
    ci_high: float
    p_value: float  # Wilcoxon signed-rank, two-sided, not adjusted
    note: str = ""


@dataclass
class StudyStatistics:
    """What :func:`compare_points` found; see the module docstring for each part."""

    reference: str
    points: list[str]
    targets: list[str]  # the table's targets, then MEAN when there are several
    seeds: dict[str, int]  # training seeds per point
    differences: pd.DataFrame  # columns DIFFERENCE_FIELDS, one row per (non-reference point, target)
    friedman: pd.DataFrame  # target, points, tracks, statistic, p_value, note
    conover: dict[str, pd.DataFrame] = field(default_factory=dict)  # target -> points x points Holm p
    per_track: pd.DataFrame = field(default_factory=pd.DataFrame)  # point, track, target, sdr, seeds


def compare_points(
    scores: pd.DataFrame,
    reference: str | None = None,
    *,
    resamples: int = RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    min_tracks: int = MIN_TRACKS,
    alpha: float = ALPHA,
) -> StudyStatistics:
    """Paired statistics of every point of ``scores`` against ``reference`` (default: the first
    point of the table), and the Friedman/Conover analysis across all points."""
    _check(scores)
    points = list(dict.fromkeys(scores["point"].astype(str)))
    reference = points[0] if reference is None else str(reference)
    if reference not in points:
        raise StatsError(f"reference point {reference!r} has no scores; the points are: {', '.join(points)}")
    seeds = {
        str(p): int(n) for p, n in scores.groupby(scores["point"].astype(str), sort=False)["seed"].nunique().items()
    }
    per_track = seed_average(scores)
    targets = list(dict.fromkeys(scores["target"].astype(str)))
    if len(targets) > 1:
        targets.append(MEAN)

    rows = []
    for target in targets:
        table = per_track_table(per_track, target, points)
        family = []
        for point in points:
            if point == reference:
                continue
            pair = table[[reference, point]].dropna()
            found = paired_difference(
                pair[reference].to_numpy(),
                pair[point].to_numpy(),
                resamples=resamples,
                seed=seed,
                min_tracks=min_tracks,
            )
            one_seed = min(seeds[point], seeds[reference]) == 1 and not math.isnan(found.p_value)
            note = "; ".join(n for n in (found.note, ONE_SEED if one_seed else "") if n)
            family.append(
                {
                    "point": point, "reference": reference, "target": target, "tracks": found.tracks,
                    "seeds": seeds[point], "reference_seeds": seeds[reference], "median_difference": found.median,
                    "ci_low": found.ci_low, "ci_high": found.ci_high, "mean_difference": found.mean,
                    "p_wilcoxon": found.p_value, "note": note,
                }
            )  # fmt: skip
        rows.extend(holm(family, alpha))
    differences = pd.DataFrame(rows, columns=list(DIFFERENCE_FIELDS))

    friedman_rows, conover = [], {}
    for target in targets:
        row, matrix = friedman_conover(per_track_table(per_track, target, points), min_tracks)
        if row["note"] == "" and min(seeds.values()) == 1:
            row["note"] = ONE_SEED
        friedman_rows.append({"target": target, **row})
        if matrix is not None:
            conover[target] = matrix
    friedman = pd.DataFrame(friedman_rows, columns=["target", "points", "tracks", "statistic", "p_value", "note"])
    return StudyStatistics(reference, points, targets, seeds, differences, friedman, conover, per_track)


def _check(scores: pd.DataFrame) -> None:
    missing = [c for c in COLUMNS if c not in scores.columns]
    if missing:
        raise StatsError(
            f"per-track scores lack the column(s) {', '.join(missing)}; "
            f"give one row per {', '.join(COLUMNS[:-1])} with its museval SDR in 'sdr'"
        )
    if scores.empty:
        raise StatsError("no per-track scores to compare: every point needs its evaluate stage's scores")
    if not pd.api.types.is_numeric_dtype(scores["sdr"]):
        raise StatsError(f"column 'sdr' holds {scores['sdr'].dtype} values; it needs numbers (dB)")
    if (scores["target"].astype(str) == MEAN).any():
        raise StatsError(f"target {MEAN!r} is computed here (the mean over targets); drop those rows")
    twice = scores.duplicated(list(COLUMNS[:-1]), keep=False)
    if twice.any():
        first = scores[twice].iloc[0]
        raise StatsError(
            f"point {first['point']!r} seed {first['seed']!r} scores track {first['track']!r} target "
            f"{first['target']!r} more than once; give each track one per-track SDR per seed"
        )


def seed_average(scores: pd.DataFrame) -> pd.DataFrame:
    """Per point, track and target: the mean SDR over the point's seeds (columns point, track,
    target, sdr, seeds). Tracks that some seed of the point lacks (or scored NaN) are left out."""
    scores = scores.astype({"point": str, "track": str, "target": str})
    seeds = scores.groupby("point", sort=False)["seed"].nunique()
    finite = scores[np.isfinite(scores["sdr"].to_numpy(dtype=float))]
    grouped = finite.groupby(["point", "track", "target"], sort=False)["sdr"].agg(["mean", "count"]).reset_index()
    grouped = grouped[grouped["count"].to_numpy() == seeds.reindex(grouped["point"]).to_numpy()]
    per_track = grouped.rename(columns={"mean": "sdr", "count": "seeds"})
    targets = scores["target"].unique()
    if len(targets) > 1:
        by_track = per_track.groupby(["point", "track"], sort=False)
        mean = by_track.agg(sdr=("sdr", "mean"), seeds=("seeds", "first"), n=("target", "size")).reset_index()
        mean = mean[mean["n"] == len(targets)].drop(columns="n").assign(target=MEAN)
        per_track = pd.concat([per_track, mean], ignore_index=True)
    return per_track[["point", "track", "target", "sdr", "seeds"]].reset_index(drop=True)


def per_track_table(per_track: pd.DataFrame, target: str, points: Sequence[str]) -> pd.DataFrame:
    """Tracks x points SDR of one target (NaN where a point lacks the track)."""
    rows = per_track[per_track["target"] == target]
    return rows.pivot(index="track", columns="point", values="sdr").reindex(columns=list(points))


def paired_difference(
    reference: np.ndarray,
    point: np.ndarray,
    *,
    resamples: int = RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    min_tracks: int = MIN_TRACKS,
    level: float = LEVEL,
) -> PairedDifference:
    """``point - reference`` over paired tracks: median and mean difference, the median's
    percentile bootstrap interval, the Wilcoxon signed-rank p-value."""
    differences = np.asarray(point, dtype=float) - np.asarray(reference, dtype=float)
    n = differences.size
    median = float(np.median(differences)) if n else math.nan
    mean = float(np.mean(differences)) if n else math.nan
    if n < min_tracks:
        note = f"{n} common track{'s' * (n != 1)}: no interval or p-value below {min_tracks}"
        return PairedDifference(n, median, mean, math.nan, math.nan, math.nan, note)
    low, high = bootstrap_median_interval(differences, resamples=resamples, seed=seed, level=level)
    with warnings.catch_warnings():  # all differences zero: scipy warns and answers p = 1, which is right
        warnings.simplefilter("ignore", RuntimeWarning)
        p_value = float(scipy_stats.wilcoxon(differences).pvalue)
    return PairedDifference(n, median, mean, low, high, p_value)


def bootstrap_median_interval(
    differences: np.ndarray, *, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED, level: float = LEVEL
) -> tuple[float, float]:
    """Percentile bootstrap interval of the median over tracks: ``resamples`` resamples of the
    tracks with replacement, drawn from ``seed`` (the same draws for every comparison of a study
    with the same number of tracks)."""
    differences = np.asarray(differences, dtype=float)
    draws = np.random.default_rng(seed).integers(0, differences.size, size=(resamples, differences.size))
    medians = np.median(differences[draws], axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(medians, [tail, 100 - tail])
    return float(low), float(high)


def holm(family: list[dict], alpha: float = ALPHA) -> list[dict]:
    """Add ``p_holm`` and ``significant`` to one target's comparisons (those with a p-value)."""
    tested = [row for row in family if not math.isnan(row["p_wilcoxon"])]
    with _cheap_gc():
        adjusted = multipletests([row["p_wilcoxon"] for row in tested], method="holm")[1] if tested else []
    for row in family:
        row["p_holm"], row["significant"] = math.nan, None
    for row, p in zip(tested, adjusted):
        row["p_holm"], row["significant"] = float(p), bool(p < alpha)
    return family


def friedman_conover(table: pd.DataFrame, min_tracks: int = MIN_TRACKS) -> tuple[dict, pd.DataFrame | None]:
    """Friedman test over the tracks every point scored (blocks: tracks) and the paired Conover
    post-hoc matrix (Holm), or a note saying why not."""
    complete = table.dropna()
    row = {"points": table.shape[1], "tracks": len(complete), "statistic": math.nan, "p_value": math.nan, "note": ""}
    if table.shape[1] < 3:
        row["note"] = f"the Friedman test needs at least 3 points ({table.shape[1]} given); see the paired tests"
        return row, None
    if len(complete) < min_tracks:
        row["note"] = f"{len(complete)} tracks common to all points: no test below {min_tracks}"
        return row, None
    result = scipy_stats.friedmanchisquare(*(complete[c].to_numpy() for c in complete.columns))
    row["statistic"], row["p_value"] = float(result.statistic), float(result.pvalue)
    with warnings.catch_warnings(), _cheap_gc():  # every track ranks the points alike: p = 0 (the limit)
        warnings.simplefilter("ignore", RuntimeWarning)
        matrix = scikit_posthocs.posthoc_conover_friedman(complete, p_adjust="holm")
    matrix.index.name, matrix.columns.name = "point", "point"
    return row, matrix


@contextmanager
def _cheap_gc() -> Iterator[None]:
    """statsmodels' Holm adjustment runs ``gc.collect()`` on every call: 0.1 s each in a process
    that imported torch. Frozen objects are not scanned, so the collection takes microseconds."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


# ---------------------------------------------------------------------------------------
# Display
def format_difference(row: pd.Series | dict) -> str:
    """``+0.31 [+0.12, +0.50]`` (dB), or the median alone with the number of tracks."""
    if math.isnan(row["median_difference"]):
        return "n/a: no common tracks"
    if math.isnan(row["ci_low"]):
        return f"{row['median_difference']:+.2f} ({row['tracks']} tracks)"
    return f"{row['median_difference']:+.2f} [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]"


def format_p(row: pd.Series | dict) -> str:
    """``0.003 *`` (* significant), with ``(one training seed)`` when flagged; else why not."""
    if math.isnan(row["p_holm"]):
        return f"n/a: {row['note']}"
    p = row["p_holm"]
    text = "<0.001" if p < 0.001 else f"{p:.3f}"
    if row["significant"]:
        text += " *"
    if ONE_SEED in row["note"]:
        text += f" ({ONE_SEED})"
    return text


def summary_columns(stats: StudyStatistics, target: str = MEAN) -> pd.DataFrame:
    """The two display columns for one target, indexed by point (the reference says so)."""
    if target not in stats.targets:
        raise StatsError(f"target {target!r} was not compared; choose one of {', '.join(stats.targets)}")
    rows = stats.differences[stats.differences["target"] == target].set_index("point")
    columns = pd.DataFrame(index=pd.Index(stats.points, name="point"), columns=[DIFFERENCE_COLUMN, P_COLUMN])
    columns.loc[stats.reference] = ["reference", ""]
    for point, row in rows.iterrows():
        columns.loc[point] = [format_difference(row), format_p(row)]
    return columns
