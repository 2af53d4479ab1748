"""GPU check, ready for the day a GPU is lent: one table in at most 4 minutes on one H200.

* Training steps/s and peak GPU memory: LightSAFT at the seed config and LaSAFT at the published
  large config, batch 8, fp32 / bf16 / fp16 (autocast; fp16 with a GradScaler), our TFC
  convolutions channels-last off and on. Plain torch steps: the model in train mode, Adam, the
  official spec MSE loss, random spectrogram batches. Each row: warm-up steps, then timed steps
  up to a count or a time cap. cuDNN autotuning off (Lightning's default) and its TF32 default on.
* Separation real-time factor: ``separate_track`` on 60 s of random stereo audio, seed config,
  fp32 weights (``separate_track`` itself runs the network under bf16 autocast on a GPU that has
  it), at its default batch of 4 (chunk, target) pairs and at 32.
* The fast BSSEval engine (``bss_eval_v4``) on CUDA against the CPU: ~30 s of 4 random targets,
  largest difference of SDR / ISR / SIR / SAR over all windows, and the speed of each.

It imports only torch, numpy and our model, separation and BSSEval code (no mlflow, dvc,
soundfile or museval, which a lent machine lacks; checked at the end), so it runs from a plain
checkout with the machine's own torch:

    PYTHONPATH=src python benchmarks/gpu_check.py [--dry-run]

``--dry-run``: the tests' tiny config on the CPU, a few steps each, short signals (seconds).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lightsaft.bsseval import bss_eval_v4
from lightsaft.config import defaults
from lightsaft.model.unet import build_model, count_parameters
from lightsaft.separation.track import separate_track
from lightsaft.spectral import SAMPLE_RATE

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = ("soundfile", "mlflow", "dvc", "museval")
LASAFT_LARGE = {"variant": "lasaft", "tfc_tdf_bias": False, "num_tdfs": 6, "dk": 32, "embedding_dim": 64}
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
DEADLINE_S = 200  # rows still to run after this many seconds are skipped (the whole run: < 4 min)
# train: (batch, warm-up steps, timed steps, time cap of the timed steps in s); audio lengths in s
FULL = {"train": (8, 3, 20, 5.0), "separate_s": 60.0, "separate_batches": (4, 32), "bsseval_s": 30.0}
DRY = {"train": (2, 1, 1, 5.0), "separate_s": 0.5, "separate_batches": (4, 32), "bsseval_s": 1.0}


def configs(dry_run: bool) -> dict[str, dict[str, Any]]:
    """The seed and LaSAFT-large configs, or (dry run) the tests' tiny config for both variants."""
    if dry_run:
        sys.path.insert(0, str(REPO / "tests"))
        from conftest import TINY_MODEL

        return {"LightSAFT tiny": dict(TINY_MODEL), "LaSAFT tiny": {**TINY_MODEL, "variant": "lasaft"}}
    seed = defaults()["model"]
    return {"LightSAFT seed": seed, "LaSAFT large": {**seed, **LASAFT_LARGE}}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak(device: torch.device) -> str:
    return f"{torch.cuda.max_memory_allocated(device) / 1e9:.2f} GB" if device.type == "cuda" else "-"


def train_row(params: dict, precision: str, channels_last: bool, device: torch.device, plan: tuple) -> str:
    """Steps per second of plain training steps (warm-up, then timed steps up to a count or a cap)."""
    batch, warmup, steps, cap = plan
    dtype = PRECISIONS[precision]
    if dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "skipped (no bf16 on this GPU)"
    torch.manual_seed(0)
    model = build_model(params, channels_last=channels_last).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    shape = (batch, 4, params["num_frame"], params["n_fft"] // 2 + 1)

    def step() -> None:
        mixture, target = torch.randn(shape, device=device), torch.randn(shape, device=device)
        condition = torch.randint(0, 4, (batch,), device=device)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            estimate = model(mixture, condition)
        loss = F.mse_loss(estimate.float(), target)  # spec_mse, the official training loss
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for _ in range(warmup):
        step()
    synchronize(device)
    done, start = 0, time.perf_counter()
    while done < steps and (done < 1 or time.perf_counter() - start < cap):
        step()
        done += 1
    synchronize(device)
    rate = done / (time.perf_counter() - start)
    return f"{rate:.2f} steps/s ({done} timed steps)"


def separation_row(params: dict, device: torch.device, seconds: float, batch: int) -> str:
    """Real-time factor of ``separate_track`` (4 targets) on random stereo audio."""
    model = build_model(params).eval()
    rng = np.random.default_rng(0)
    warmup = rng.uniform(-0.5, 0.5, (int(SAMPLE_RATE * min(2.0, seconds / 4)), 2)).astype(np.float32)
    separate_track(model, warmup, batch_size=batch, device=str(device))
    mixture = rng.uniform(-0.5, 0.5, (int(SAMPLE_RATE * seconds), 2)).astype(np.float32)
    synchronize(device)
    start = time.perf_counter()
    separate_track(model, mixture, batch_size=batch, device=str(device))
    wall = time.perf_counter() - start
    return f"{seconds / wall:.1f}x real time ({wall:.2f} s for {seconds:.0f} s, RTF {wall / seconds:.4f})"


def bsseval_row(device: torch.device, seconds: float) -> str:
    """The fast BSSEval engine on ``device`` against the CPU: largest metric difference, speeds."""
    rng = np.random.default_rng(0)
    length = int(SAMPLE_RATE * seconds)
    refs = rng.standard_normal((4, length, 2)).astype(np.float32)
    estimates = list(refs + 0.3 * rng.standard_normal(refs.shape).astype(np.float32))
    cut = min(2 * SAMPLE_RATE, length // 2)
    short = refs[:, :cut], [[e[:cut] for e in estimates]]
    scores, walls = {}, {}
    for dev in ("cpu", str(device)):
        bss_eval_v4(*short, window=SAMPLE_RATE, hop=SAMPLE_RATE, device=dev)  # warm-up (FFT plans, context)
        synchronize(torch.device(dev))
        start = time.perf_counter()
        scores[dev] = bss_eval_v4(refs, [estimates], window=SAMPLE_RATE, hop=SAMPLE_RATE, device=dev)[0]
        walls[dev] = time.perf_counter() - start
    diff = np.abs(scores[str(device)] - scores["cpu"])
    worst = ", ".join(f"{name} {np.nanmax(d):.1e}" for name, d in zip(("SDR", "ISR", "SIR", "SAR"), diff))
    return (
        f"{device.type} {walls[str(device)]:.2f} s, cpu {walls['cpu']:.2f} s "
        f"({walls['cpu'] / walls[str(device)]:.1f}x); max |{device.type} - cpu| dB: {worst}"
    )


def guarded(start: float, fn: Any, *args: Any) -> str:
    """A row's figure, or why there is none (time budget spent, out of memory)."""
    if time.perf_counter() - start > DEADLINE_S:
        return f"skipped (time budget of {DEADLINE_S} s spent)"
    try:
        return fn(*args)
    except torch.OutOfMemoryError:
        return "out of memory"


def print_table(rows: list[list[str]], headers: list[str]) -> None:
    """A plain text table (tabulate is not on a lent machine)."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    line = "  ".join("-" * w for w in widths)
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)), line, sep="\n")
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny config on the CPU, a few steps (seconds)")
    args = parser.parse_args()
    start = time.perf_counter()
    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    if not args.dry_run and device.type != "cuda":
        raise SystemExit("gpu_check: no CUDA device here (use --dry-run for a CPU smoke run)")
    plan = DRY if args.dry_run else FULL
    if args.dry_run:
        torch.set_num_threads(1)  # tiny ops: threads only wait for each other on a busy machine
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)"
    print(f"gpu_check on {name}, torch {torch.__version__}, training batch {plan['train'][0]}", flush=True)

    rows = []
    for label, params in configs(args.dry_run).items():
        label = f"{label} ({count_parameters(build_model(params)) / 1e6:.1f} M)"
        for precision in PRECISIONS:
            for channels_last in (False, True):
                reset_peak(device)
                figure = guarded(start, train_row, params, precision, channels_last, device, plan["train"])
                rows.append(["train", label, f"{precision}, channels_last {'on' if channels_last else 'off'}",
                             figure, peak(device)])  # fmt: skip
                print(" | ".join(rows[-1]), file=sys.stderr, flush=True)  # progress
    seed_label, seed = next(iter(configs(args.dry_run).items()))
    for batch in plan["separate_batches"]:
        reset_peak(device)
        figure = guarded(start, separation_row, seed, device, plan["separate_s"], batch)
        rows.append(["separate", f"{seed_label}, {plan['separate_s']:g} s stereo", f"batch {batch}", figure,
                     peak(device)])  # fmt: skip
        print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    reset_peak(device)
    figure = guarded(start, bsseval_row, device, plan["bsseval_s"])
    rows.append(["bss_eval_v4", f"4 targets, {plan['bsseval_s']:g} s stereo", "1 s windows", figure, peak(device)])

    imported = sorted({m.split(".")[0] for m in sys.modules} & set(FORBIDDEN))
    print_table(rows, ["check", "config", "setting", "result", "peak GPU memory"])
    print(f"total {time.perf_counter() - start:.0f} s")
    if imported:
        raise SystemExit(f"gpu_check imported {', '.join(imported)}: a lent GPU machine lacks them")
    print(f"imports: none of {', '.join(FORBIDDEN)}")


if __name__ == "__main__":
    main()
