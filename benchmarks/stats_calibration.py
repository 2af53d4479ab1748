"""Calibration of the study statistics (lightsaft.study.stats) on simulated studies.

Per-track SDR (dB) = track effect (sd 3 dB, shared by all points) + point effect + a training
offset per point and seed (sd ``--seed-sd``: training noise, which the tests over tracks do not
see) + per-track noise per seed (sd 0.3 dB); seeds are averaged within a track, as the study
comparison does. Rows:

* false-positive rate: two points that differ by noise only, Wilcoxon p < 0.05 (nominal 0.05);
* familywise rate: three points against a reference, all noise only, any Holm p < 0.05 (at most 0.05);
* coverage: how often the 95% percentile bootstrap interval (10,000 resamples, as the study
  comparison uses) holds the true median difference of a point 0.25 dB better (nominal 0.95);
* the same rates with training noise, for one and three seeds per point: what the
  "one training seed" flag warns about.

Each figure comes with its 95% binomial interval over the simulated studies.

    .venv/bin/python benchmarks/stats_calibration.py [--studies 2000] [--tracks 50] [--quick]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import stats as scipy_stats
from tabulate import tabulate

from lightsaft.study.stats import RESAMPLES, holm, paired_difference

TRACK_SD, NOISE_SD = 3.0, 0.3


def simulate(rng: np.random.Generator, effects: list[float], tracks: int, seeds: int, seed_sd: float) -> np.ndarray:
    """Seed-averaged per-track SDR, ``[points, tracks]``."""
    track_effect = rng.normal(5.0, TRACK_SD, size=tracks)
    out = np.empty((len(effects), tracks))
    for p, effect in enumerate(effects):
        runs = (
            track_effect + effect + rng.normal(0, seed_sd, size=(seeds, 1)) + rng.normal(0, NOISE_SD, (seeds, tracks))
        )
        out[p] = runs.mean(axis=0)
    return out


def rate(hits: int, studies: int) -> str:
    low, high = scipy_stats.binomtest(hits, studies).proportion_ci(0.95)
    return f"{hits / studies:.3f} [{low:.3f}, {high:.3f}]"


def measure(rng, studies: int, tracks: int, seeds: int, seed_sd: float, resamples: int) -> list[str]:
    false, familywise, covered = 0, 0, 0
    for _ in range(studies):
        ref, a = simulate(rng, [0.0, 0.0], tracks, seeds, seed_sd)
        false += paired_difference(ref, a, resamples=10).p_value < 0.05  # the interval is not used here
        ref, *others = simulate(rng, [0.0, 0.0, 0.0, 0.0], tracks, seeds, seed_sd)
        family = holm([{"p_wilcoxon": paired_difference(ref, o, resamples=10).p_value} for o in others])
        familywise += any(row["significant"] for row in family)
        ref, better = simulate(rng, [0.0, 0.25], tracks, seeds, seed_sd)
        found = paired_difference(ref, better, resamples=resamples)
        covered += found.ci_low <= 0.25 <= found.ci_high  # noise is symmetric: the true median is 0.25
    return [rate(false, studies), rate(familywise, studies), rate(covered, studies)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=2000)
    parser.add_argument("--tracks", type=int, default=50)
    parser.add_argument("--seed-sd", type=float, default=0.1, help="training noise (dB) of the last rows")
    parser.add_argument("--quick", action="store_true", help="100 studies, 1,000 resamples: checks that it runs")
    args = parser.parse_args()
    studies, resamples = (100, 1000) if args.quick else (args.studies, RESAMPLES)
    rng = np.random.default_rng(0)
    rows = []
    for seeds, seed_sd in ((1, 0.0), (2, 0.0), (1, args.seed_sd), (3, args.seed_sd)):
        start = time.perf_counter()
        figures = measure(rng, studies, args.tracks, seeds, seed_sd, resamples)
        rows.append([f"{seed_sd:.2f}", seeds, *figures, f"{time.perf_counter() - start:.0f}"])
    print(f"{studies} simulated studies of {args.tracks} tracks; bootstrap {resamples} resamples; [95% CI]")
    print(
        tabulate(
            rows,
            headers=["training sd dB", "seeds", "false-positive rate", "familywise (Holm, 3)", "coverage", "s"],
        )
    )


if __name__ == "__main__":
    main()
