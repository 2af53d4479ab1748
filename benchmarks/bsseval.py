"""BSSEval v4 speed: museval vs our fast engine on the same input, side by side in one run.

Input: one synthetic 60 s track (four targets, 16-bit stems like decoded MUSDB18) with estimates
= stems + noise at 10 dB SNR; museval's ``evaluate`` (what ``eval_mus_track`` runs) against
``bss_eval_v4``, each with 1 and 2 threads (BLAS and torch), on CUDA too when present.
Every row runs in its own fresh process, after a 5 s warm-up call in that process. Also: the fast
engine scoring the estimates and the mixture baseline together (what the evaluate stage does per
track), and the largest difference from museval over all frames. The machine is shared: figures
are noisy; compare within one run.

    .venv/bin/python benchmarks/bsseval.py [--seconds 60] [--threads 1 2] [--quick]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from model_speed import isolated, quiet_openmp
from tabulate import tabulate

from lightsaft.bsseval import bss_eval_v4
from lightsaft.data.synthetic import synthesize
from lightsaft.spectral import SAMPLE_RATE, TARGETS

TEST_SET_SECONDS = 3.5 * 3600  # MUSDB18 test set: 50 tracks, about 3.5 hours
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def make_input(seconds: float, path: Path) -> None:
    rng = np.random.default_rng(0)
    stems = {k: v.astype(np.float64) / 32768 for k, v in synthesize(rng, seconds).items()}
    refs = np.stack([stems[t] for t in TARGETS])
    noise = rng.standard_normal(refs.shape) * np.sqrt((refs**2).mean(axis=(1, 2), keepdims=True) / 10)
    np.savez(path, refs=refs, estimates=refs + noise, mixture=stems["mixture"])


def score(engine: str, path: str, threads: int, device: str, baseline: bool, warm_up: bool = True) -> dict:
    """Wall time of one scoring call in this (fresh) process, and its metrics."""
    torch.set_num_threads(threads)
    data = np.load(path)
    refs, sets = data["refs"], [list(data["estimates"])]
    if baseline:  # as the evaluate stage passes it: one signal, the estimate of every target
        sets.append([data["mixture"]] * len(TARGETS))
    short = refs[:, : 5 * SAMPLE_RATE], [[x[: 5 * SAMPLE_RATE] for x in est] for est in sets]
    if warm_up:
        measure(engine, *short, device)  # warm-up in this process (FFT plans, BLAS, CUDA context)
    start = time.perf_counter()
    metrics = measure(engine, refs, sets, device)
    return {"wall": time.perf_counter() - start, "metrics": metrics[0]}


def measure(engine: str, refs: np.ndarray, sets: list[np.ndarray], device: str) -> list[np.ndarray]:
    if engine == "museval":
        import museval

        return [np.stack(museval.evaluate(refs, s, win=SAMPLE_RATE, hop=SAMPLE_RATE, mode="v4")) for s in sets]
    metrics = bss_eval_v4(refs, sets, SAMPLE_RATE, SAMPLE_RATE, device=device)
    if device == "cuda":
        torch.cuda.synchronize()
    return metrics


def run(engine: str, path: str, threads: int, device: str = "cpu", baseline: bool = False, fresh: bool = True) -> dict:
    """``score`` in a fresh process (``fresh``), else in this one (--quick: no process start-ups)."""
    if not fresh:
        return score(engine, path, threads, device, baseline, warm_up=False)
    for variable in THREAD_VARIABLES:  # read by BLAS / OpenMP when the spawned process starts
        os.environ[variable] = str(threads)
    return isolated(score, engine=engine, path=path, threads=threads, device=device, baseline=baseline)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: a 1 s track, 1 thread, one process, no warm-up"
    )
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.threads = 1.0, [1]
    quiet_openmp()
    rows, reference = [], None
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "input.npz")
        make_input(args.seconds, Path(path))
        for threads in args.threads:
            fresh = not args.quick
            slow = run("museval", path, threads, fresh=fresh)
            fast = run("fast", path, threads, fresh=fresh)
            both = run("fast", path, threads, baseline=True, fresh=fresh)
            reference = slow["metrics"] if reference is None else reference
            diff = np.nanmax(np.abs(fast["metrics"] - slow["metrics"]))
            rows.append(
                [
                    f"CPU, {threads} thread(s)",
                    slow["wall"] / args.seconds,
                    fast["wall"] / args.seconds,
                    f"{slow['wall'] / fast['wall']:.1f}x",
                    both["wall"] / args.seconds,
                    diff,
                ]
            )
        if torch.cuda.is_available():
            gpu = run("fast", path, 1, "cuda")
            both = run("fast", path, 1, "cuda", baseline=True)
            diff = np.nanmax(np.abs(gpu["metrics"] - reference))
            rows.append(
                [
                    f"CUDA ({torch.cuda.get_device_name()})",
                    None,
                    gpu["wall"] / args.seconds,
                    "-",
                    both["wall"] / args.seconds,
                    diff,
                ]
            )
    print(f"BSSEval v4, {args.seconds:g} s stereo, 4 targets, 1 s windows; seconds of compute per second of audio")
    print(
        tabulate(
            rows,
            headers=["", "museval", "fast", "speed-up", "fast, est + baseline", "max |diff| dB"],
            floatfmt=(".3f", ".3f", ".3f", ".3f", ".3f", ".1e"),
            missingval="-",
        )
    )
    best = min(row[4] for row in rows)
    print(
        f"MUSDB18 test set ({TEST_SET_SECONDS / 3600:g} h of audio), estimates + baseline, best row: "
        f"{best * TEST_SET_SECONDS / 60:.1f} min in one process "
        f"(museval: {2 * rows[0][1] * TEST_SET_SECONDS / 3600:.1f} h at {args.threads[0]} thread(s))"
    )


if __name__ == "__main__":
    main()
