"""Forward / forward+backward time and peak memory of LightSAFT vs LaSAFT at the seed config.

CPU (2 torch threads), input ``[B, 4, 128, 2049]`` float32. Forward = eval + inference_mode;
fwd+bwd = train mode, loss = mean(y**2). B = 1 in train mode keeps the control model in eval
mode (its BatchNorm1d needs two items), as the official figures did. Every measurement runs in
its own fresh process, so "peak RSS" is that measurement's process peak and peaks don't mix.
LightSAFT: best of --repeats runs after one warm-up; LaSAFT (slow): --lasaft-repeats runs, with
a warm-up only when that is > 1. The official implementation's published figures (../shared/reference/README.md §7)
are printed beside ours. With CUDA, also bf16 autocast at batch 8 on the GPU.

The machine is shared: wall times are noisy; compare the ratios measured in one run. Measuring
processes get OMP_WAIT_POLICY=PASSIVE (unless set): with OpenMP threads spinning at barriers, two
2-thread processes on 2 cores stall each other (measured here: 2x slower seed forward, 150x
slower tiny forward); sleeping threads make the figures close to a quiet machine's.

    .venv/bin/python benchmarks/model_speed.py [--variants lightsaft,lasaft] [--batches 1,2,4]
        [--repeats 2] [--lasaft-repeats 1] [--quick]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import psutil
import torch
from tabulate import tabulate

from lightsaft.config import defaults
from lightsaft.model import build_model, count_parameters

REPO = Path(__file__).resolve().parents[1]
CPU_THREADS = 2
GPU_BATCH, GPU_WARMUP, GPU_REPEATS = 8, 3, 10
LASAFT_FWDBWD_MIN_AVAILABLE_GB = 16
MODES = ("fwd", "fwdbwd")  # eval forward; train forward + backward
# Reference figures (official code, ../shared/reference/README.md §7): same kind of machine (2-core AMD EPYC, torch
# 2.13 CPU, 2 threads). Published, not measured by us. Seconds / GB; None = not run there.
REFERENCE = {
    ("lightsaft", 1): {"fwd": 3.2, "fwdbwd": 7.9, "rss_fwd": 0.85, "rss_fwdbwd": 3.3},
    ("lightsaft", 4): {"fwd": 16.1, "fwdbwd": 48.8, "rss_fwd": 2.1, "rss_fwdbwd": 10.1},
    ("lasaft", 1): {"fwd": 17.7, "fwdbwd": 50.7, "rss_fwd": 2.0, "rss_fwdbwd": 6.5},
    ("lasaft", 4): {"fwd": 61.1, "fwdbwd": None, "rss_fwd": 4.5, "rss_fwdbwd": None},
}


def model_params(variant: str, quick: bool = False) -> dict[str, Any]:
    """The seed config (params.yaml defaults), or the tests' tiny config for a smoke run."""
    if quick:
        sys.path.insert(0, str(REPO / "tests"))
        from conftest import TINY_MODEL

        return {**TINY_MODEL, "variant": variant}
    return {**defaults()["model"], "variant": variant}


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def quiet_openmp() -> None:
    """Idle OpenMP threads sleep instead of spinning (inherited by the measuring processes)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def isolated(fn: Callable[..., dict], **kwargs: Any) -> dict:
    """Run ``fn(**kwargs)`` in a fresh spawned process (its own peak RSS / CUDA peak)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            return pool.submit(fn, **kwargs).result()
        except BrokenProcessPool:
            return {"error": "worker process died (killed for memory?)"}
        except torch.OutOfMemoryError as e:
            return {"error": f"out of memory: {str(e).splitlines()[0]}"}


def measure(variant: str, batch: int, backward: bool, device: str, quick: bool, warmup: int, repeats: int) -> dict:
    """Best-of-``repeats`` wall time of one forward (or forward+backward) after ``warmup`` runs."""
    torch.set_num_threads(CPU_THREADS)
    torch.manual_seed(0)
    params = model_params(variant, quick)
    model = build_model(params).to(device)
    spec = torch.randn(batch, 4, params["num_frame"], params["n_fft"] // 2 + 1, device=device)
    condition = torch.arange(batch, device=device) % 4
    model.train(backward)
    if backward and batch == 1:
        model.net.control.eval()  # BatchNorm1d cannot normalise a single item
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")

    def run() -> None:
        if backward:
            model.zero_grad(set_to_none=True)
            with autocast:
                out = model(spec, condition)
            out.float().pow(2).mean().backward()
        else:
            with torch.inference_mode(), autocast:
                model(spec, condition)
        synchronize(device)

    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        run()
        if i >= warmup:
            times.append(time.perf_counter() - start)
        if i == 0:
            first_rss = peak_rss_gb()  # later runs add heap fragmentation to the process peak
    return {
        "seconds": min(times),
        "runs": times,
        "rss_gb": peak_rss_gb(),
        "rss_first_gb": first_rss,
        "params": count_parameters(model),
        "gpu_gb": torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None,
    }


def cpu_skip_reason(variant: str, batch: int, backward: bool, quick: bool) -> str | None:
    if quick or variant != "lasaft" or not backward:
        return None
    if batch >= 4:
        return "skipped (est. > 23 GB)"
    available = psutil.virtual_memory().available / 1e9
    if available < LASAFT_FWDBWD_MIN_AVAILABLE_GB:
        return (
            f"skipped ({available:.1f} GB available, needs >= {LASAFT_FWDBWD_MIN_AVAILABLE_GB} GB; "
            f"close other programs)"
        )
    return None


def fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a / b:.2f}x"


def show(result: dict, key: str, unit: str = "", digits: int = 1) -> str:
    """A measured figure, or why there is none (skip reason / error)."""
    return result.get("skip") or result.get("error") or fmt(result[key], unit, digits)


def bench_cpu(args: argparse.Namespace) -> dict:
    results = {}
    for variant in args.variants:
        warmup, repeats = (
            (1, args.repeats) if variant == "lightsaft" else (int(args.lasaft_repeats > 1), args.lasaft_repeats)
        )
        for batch in args.batches:
            for mode in MODES:
                backward = mode == "fwdbwd"
                skip = cpu_skip_reason(variant, batch, backward, args.quick)
                result = (
                    {"skip": skip}
                    if skip
                    else isolated(
                        measure,
                        variant=variant,
                        batch=batch,
                        backward=backward,
                        device="cpu",
                        quick=args.quick,
                        warmup=warmup,
                        repeats=repeats,
                    )
                )
                results[(variant, batch, mode)] = result
                runs = ", ".join(f"{t:.1f}" for t in result.get("runs", []))
                print(
                    f"  {variant} B={batch} {mode}: {show(result, 'seconds', ' s', 2)} "
                    f"(runs {runs or '-'}; peak RSS {fmt(result.get('rss_gb'), ' GB', 2)}, after the first run "
                    f"{fmt(result.get('rss_first_gb'), ' GB', 2)})",
                    flush=True,
                )
    return results


def print_cpu(results: dict, args: argparse.Namespace) -> None:
    reference = {} if args.quick else REFERENCE
    rows = []
    for variant in args.variants:
        for batch in args.batches:
            fwd, bwd = results[(variant, batch, "fwd")], results[(variant, batch, "fwdbwd")]
            ref = reference.get((variant, batch), {})
            rows.append(
                [
                    variant + (" *" if batch == 1 else ""),
                    batch,
                    show(fwd, "seconds", " s"),
                    show(bwd, "seconds", " s"),
                    f"{fmt(fwd.get('rss_gb'), '', 2)} / {fmt(bwd.get('rss_gb'), '', 2)}",
                    fmt(bwd.get("rss_first_gb"), "", 2),
                    fmt(ref.get("fwd"), " s"),
                    fmt(ref.get("fwdbwd"), " s"),
                    f"{fmt(ref.get('rss_fwd'), '', 2)} / {fmt(ref.get('rss_fwdbwd'), '', 1)}",
                    ratio(fwd.get("seconds"), ref.get("fwd")),
                    ratio(bwd.get("seconds"), ref.get("fwdbwd")),
                ]
            )
    print(
        tabulate(
            rows,
            stralign="right",
            headers=[
                "model",
                "B",
                "forward",
                "fwd+bwd",
                "peak RSS GB\nfwd / f+b",
                "f+b after\n1st run",
                "official\nforward",
                "official\nfwd+bwd",
                "official RSS GB\nfwd / f+b",
                "ours/official\nforward",
                "ours/official\nfwd+bwd",
            ],
        )
    )
    print(
        "  * B=1 fwd+bwd keeps the control model in eval mode, as the official figures did.\n"
        "  peak RSS = process peak over all runs (warm-up included); the glibc heap fragments over\n"
        "  repeated runs, so the peak after the first run is shown too.\n"
        "  official = reference figures (official code, ../shared/reference/README.md §7): published, "
        "not measured here."
    )
    if not {"lightsaft", "lasaft"} <= set(args.variants):
        return

    keys = (("fwd", "seconds"), ("fwdbwd", "seconds"), ("fwd", "rss_gb"), ("fwdbwd", "rss_gb"))
    ref_keys = ("fwd", "fwdbwd", "rss_fwd", "rss_fwdbwd")
    rows = []
    for batch in args.batches:
        measured = [
            ratio(results[("lasaft", batch, mode)].get(key), results[("lightsaft", batch, mode)].get(key))
            for mode, key in keys
        ]
        official = [
            ratio(reference.get(("lasaft", batch), {}).get(key), reference.get(("lightsaft", batch), {}).get(key))
            for key in ref_keys
        ]
        rows.append([batch, *measured, *official])
    print("\nLaSAFT / LightSAFT: measured here in this run | official (../shared/reference/README.md §7)")
    print(
        tabulate(
            rows,
            stralign="right",
            headers=[
                "B",
                "time fwd",
                "time f+b",
                "RSS fwd",
                "RSS f+b",
                "official\ntime fwd",
                "official\ntime f+b",
                "official\nRSS fwd",
                "official\nRSS f+b",
            ],
        )
    )


def bench_gpu(args: argparse.Namespace) -> None:
    if not torch.cuda.is_available():
        print("\nGPU: skipped (no CUDA device on this machine)")
        return
    rows, results = [], {}
    for variant in args.variants:
        for mode in MODES:
            results[(variant, mode)] = isolated(
                measure,
                variant=variant,
                batch=GPU_BATCH,
                backward=mode == "fwdbwd",
                device="cuda",
                quick=args.quick,
                warmup=GPU_WARMUP,
                repeats=GPU_REPEATS,
            )
        fwd, bwd = results[(variant, "fwd")], results[(variant, "fwdbwd")]
        rows.append(
            [
                variant,
                GPU_BATCH,
                show(fwd, "seconds", " s", 3),
                show(bwd, "seconds", " s", 3),
                show(fwd, "gpu_gb", " GB", 2),
                show(bwd, "gpu_gb", " GB", 2),
            ]
        )
    print(
        f"\nGPU ({torch.cuda.get_device_name()}), bf16 autocast, batch {GPU_BATCH}, best of {GPU_REPEATS} "
        f"after {GPU_WARMUP} warm-ups; memory = torch.cuda.max_memory_allocated"
    )
    print(tabulate(rows, headers=["model", "B", "forward", "fwd+bwd", "peak fwd", "peak fwd+bwd"], stralign="right"))
    if {"lightsaft", "lasaft"} <= set(args.variants):
        full, light = {m: results[("lasaft", m)] for m in MODES}, {m: results[("lightsaft", m)] for m in MODES}
        print(
            "LaSAFT / LightSAFT: "
            + ", ".join(
                f"{m} time {ratio(full[m].get('seconds'), light[m].get('seconds'))}, "
                f"memory {ratio(full[m].get('gpu_gb'), light[m].get('gpu_gb'))}"
                for m in MODES
            )
        )


def int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", type=lambda s: s.split(","), default=["lightsaft", "lasaft"])
    parser.add_argument("--batches", type=int_list, default=[1, 2, 4], help="CPU batch sizes")
    parser.add_argument("--repeats", type=int, default=2, help="LightSAFT timed runs (after one warm-up)")
    parser.add_argument(
        "--lasaft-repeats", type=int, default=1, help="LaSAFT timed runs (a warm-up precedes them only when > 1)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny config: a smoke run of this script")
    args = parser.parse_args()
    quiet_openmp()
    for variant in args.variants:
        if variant not in ("lightsaft", "lasaft"):
            parser.error(f"--variants: unknown variant {variant!r} (choose from lightsaft, lasaft)")

    config = "tiny config (--quick)" if args.quick else "seed config"
    p = model_params("lightsaft", args.quick)
    lasaft_protocol = (
        f"best of {args.lasaft_repeats} after one warm-up" if args.lasaft_repeats > 1 else "single run, no warm-up"
    )
    print(
        f"CPU, {config}, input [B, 4, {p['num_frame']}, {p['n_fft'] // 2 + 1}] float32, {CPU_THREADS} "
        f"threads ({os.cpu_count()} cores, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}). "
        f"LightSAFT: best of {args.repeats} after one warm-up; LaSAFT: {lasaft_protocol}. "
        f"Load average at start {os.getloadavg()[0]:.1f} (shared machine: timings are noisy)"
    )
    results = bench_cpu(args)
    params = {v: r["params"] for (v, _, _), r in results.items() if "params" in r}
    print(
        f"\nload average at end {os.getloadavg()[0]:.1f}; trainable parameters: "
        + ", ".join(f"{v} {n:,}" for v, n in params.items())
    )
    print_cpu(results, args)
    bench_gpu(args)


if __name__ == "__main__":
    main()
