"""Training steps per second: forward + spec_mse loss + backward + Adam step, random batches.

No data loading (see benchmarks/loader.py for that): this is the model's share of a training
step. CPU, 2 torch threads (--threads): the tests' tiny config at batch 8 and 2, the seed
config at batch 2. With CUDA also the seed config at batch 8 under bf16 autocast, LightSAFT vs
LaSAFT, with peak GPU memory. Each row runs in its own fresh process; rate = timed steps / wall
time, best of --repeats after warm-up steps. The machine is shared: figures are noisy.

    .venv/bin/python benchmarks/train_speed.py [--steps 20] [--seed-steps 2] [--repeats 2]
        [--threads 2] [--quick]
"""

from __future__ import annotations

import argparse
import os
import time
from functools import partial

import torch
from model_speed import (
    CPU_THREADS,
    GPU_BATCH,
    fmt,
    isolated,
    model_params,
    peak_rss_gb,
    quiet_openmp,
    ratio,
    show,
    synchronize,
)
from tabulate import tabulate

from lightsaft.model.unet import build_model
from lightsaft.training.losses import Target, spec_mse

GPU_WARMUP, GPU_STEPS = 3, 20


def steps_per_second(
    variant: str, tiny: bool, batch: int, device: str, warmup: int, steps: int, repeats: int, threads: int = CPU_THREADS
) -> dict:
    """Best-of-``repeats`` rate of ``steps`` optimizer steps after ``warmup`` steps."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    params = model_params(variant, tiny)
    model = build_model(params).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    shape = (batch, 4, params["num_frame"], params["n_fft"] // 2 + 1)
    mixture, target = torch.randn(shape, device=device), torch.randn(shape, device=device)
    condition = torch.arange(batch, device=device) % 4
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = spec_mse(model(mixture, condition), Target(model.front, spec=target))
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    rates = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        rates.append(steps / (time.perf_counter() - start))
    return {
        "rate": max(rates),
        "rates": rates,
        "rss_gb": peak_rss_gb(),
        "gpu_gb": torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run, tiny config")
    parser.add_argument("--seed-steps", type=int, default=2, help="timed steps per run, seed config (CPU)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per row (the best counts)")
    parser.add_argument("--threads", type=int, default=CPU_THREADS, help="torch CPU threads")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: tiny config everywhere, 2 steps, 1 run, one process"
    )
    args = parser.parse_args()
    quiet_openmp()
    seed_steps = 1 if args.quick else args.seed_steps
    measure = partial(isolated, steps_per_second)  # each row in a fresh process
    if args.quick:  # seconds: the test of the benchmarks runs this, in this process
        args.steps, args.repeats, measure = 2, 1, steps_per_second

    # (label, tiny config?, batch, warm-up steps, timed steps)
    cpu_rows = [
        ("tiny", True, 8, 3, args.steps),
        ("tiny", True, 2, 3, args.steps),
        ("seed", args.quick, 2, 1, seed_steps),
    ]
    print(
        f"CPU, {args.threads} threads ({os.cpu_count()} cores, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}), "
        f"LightSAFT, float32, Adam; best of {args.repeats} runs after warm-up. Load average at start "
        f"{os.getloadavg()[0]:.1f} (shared machine: timings are noisy)"
    )
    rows = []
    for label, tiny, batch, warmup, steps in cpu_rows:
        result = measure(
            variant="lightsaft",
            tiny=tiny,
            batch=batch,
            device="cpu",
            warmup=warmup,
            steps=steps,
            repeats=args.repeats,
            threads=args.threads,
        )
        p = model_params("lightsaft", tiny)
        rows.append(
            [
                label + (" (tiny: --quick)" if tiny and label == "seed" else ""),
                batch,
                f"[{batch}, 4, {p['num_frame']}, {p['n_fft'] // 2 + 1}]",
                f"{warmup} + {steps}",
                show(result, "rate", "", 3),
                fmt(1 / result["rate"] if "rate" in result else None, " s", 2),
                fmt(result.get("rss_gb"), " GB", 2),
            ]
        )
    print(
        tabulate(
            rows, stralign="right", headers=["config", "B", "input", "warm-up + timed", "steps/s", "s/step", "peak RSS"]
        )
    )
    print(f"load average at end {os.getloadavg()[0]:.1f}")

    if not torch.cuda.is_available():
        print("\nGPU: skipped (no CUDA device on this machine)")
        return
    rows, rates = [], {}
    for variant in ("lightsaft", "lasaft"):
        result = measure(
            variant=variant,
            tiny=args.quick,
            batch=GPU_BATCH,
            device="cuda",
            warmup=GPU_WARMUP,
            steps=GPU_STEPS,
            repeats=args.repeats,
        )
        rates[variant] = result
        rows.append([variant, GPU_BATCH, show(result, "rate", "", 2), show(result, "gpu_gb", " GB", 2)])
    print(
        f"\nGPU ({torch.cuda.get_device_name()}), {'tiny' if args.quick else 'seed'} config, bf16 autocast, "
        f"batch {GPU_BATCH}, {GPU_WARMUP} + {GPU_STEPS} steps; memory = torch.cuda.max_memory_allocated"
    )
    print(tabulate(rows, stralign="right", headers=["model", "B", "steps/s", "peak memory"]))
    light, full = rates["lightsaft"], rates["lasaft"]
    print(
        f"LightSAFT / LaSAFT steps/s {ratio(light.get('rate'), full.get('rate'))}; "
        f"LaSAFT / LightSAFT memory {ratio(full.get('gpu_gb'), light.get('gpu_gb'))}"
    )


if __name__ == "__main__":
    main()
