"""Our network against the official one, side by side in one process: time and peak memory.

The official networks come from ../shared/reference/official_src (imported here only, never by
the package). Ours gets the official weights (``load_official_state_dict``) and both see the same
input ``[B, 4, num_frame, n_fft//2+1]`` float32 on the CPU, with 2 torch threads:

* LightSAFT at the seed config (params.yaml ``model``), batch 2 and 4;
* LaSAFT at the published large config (tfc_tdf_bias false, num_tdfs 6, dk 32, embedding_dim 64,
  otherwise the seed config: 31,541,908 parameters), batch 2.

forward = eval mode under inference_mode; fwd+bwd = train mode, loss mean(y**2), backward.
Time: one warm-up each, then --repeats runs per network, interleaved (the order alternates, so
a drift of the shared machine's load hits both alike); the median is shown. Peak memory: each
(network, config, mode) runs once in its own process forked from a server that has imported
everything (a process's peak cannot tell two models apart); shown is the peak RSS of that run
above the process's RSS before it (activations, gradients, workspaces). The machine is shared:
absolute times are noisy, the ratios measured in one run are what to read.

    .venv/bin/python benchmarks/model_speed.py [--repeats 5] [--quick] [--channels-last auto|on|off]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib
import multiprocessing
import os
import resource
import statistics
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
from lightsaft.model.unet import build_model, count_parameters
from lightsaft.weights.official_keys import load_official_state_dict

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LIGHTSAFT_SHARED", REPO.parent / "shared"))
OFFICIAL_SRC = SHARED / "reference" / "official_src"
CPU_THREADS = 2
GPU_BATCH = 8  # used by train_speed.py
LASAFT_LARGE = {"variant": "lasaft", "tfc_tdf_bias": False, "num_tdfs": 6, "dk": 32, "embedding_dim": 64}
# (label, overrides of the seed config, batch); --quick keeps the tiny config, only the variant changes
CASES = [("LightSAFT seed", {}, 2), ("LightSAFT seed", {}, 4), ("LaSAFT large", LASAFT_LARGE, 2)]
MODES = ("forward", "fwd+bwd")
CHANNELS_LAST = {"auto": None, "on": True, "off": False}
NETWORKS = ("official", "ours")  # the first is the reference of the ratios
_MODELS = "lasaft.source_separation.conditioned.cunet.models"
OFFICIAL = {
    "lightsaft": (f"{_MODELS}.dcun_tfc_gpocm_lightsaft", "DCUN_TFC_GPoCM_LightSAFT_Framework"),
    "lasaft": (f"{_MODELS}.dcun_tfc_gpocm_lasaft", "DCUN_TFC_GPoCM_LaSAFT_Framework"),
}
# As official_src/README.md says: the package and its stubs (wandb, wget) on the path.
OFFICIAL_PATHS = [str(OFFICIAL_SRC), str(OFFICIAL_SRC / "stubs")]
sys.path[:0] = [p for p in OFFICIAL_PATHS if p not in sys.path]


def model_params(variant: str, quick: bool = False) -> dict[str, Any]:
    """The seed config (params.yaml defaults), or the tests' tiny config for a smoke run."""
    if quick:
        sys.path.insert(0, str(REPO / "tests"))
        from conftest import TINY_MODEL

        return {**TINY_MODEL, "variant": variant}
    return {**defaults()["model"], "variant": variant}


def case_params(overrides: dict[str, Any], quick: bool) -> dict[str, Any]:
    base = model_params("lightsaft", quick)
    if quick:
        return {**base, "variant": overrides.get("variant", "lightsaft")}
    return {**base, **overrides}


def official_network(params: dict[str, Any]) -> torch.nn.Module:
    """The official spec2spec network for our ``model`` params (random Xavier init)."""
    if not OFFICIAL_SRC.is_dir():
        raise SystemExit(f"{OFFICIAL_SRC}: official source not found (set LIGHTSAFT_SHARED to the shared folder)")
    module, name = OFFICIAL[params["variant"]]
    framework = getattr(importlib.import_module(module), name)
    kwargs = {k: v for k, v in params.items() if k != "variant"}
    return framework(
        optimizer="adam", lr=1e-3, auto_lr_schedule=False, train_loss="spec_mse", val_loss="raw_l1", **kwargs
    ).spec2spec


def build(name: str, params: dict[str, Any], channels_last: bool | None) -> torch.nn.Module:
    """One of NETWORKS with random weights."""
    return official_network(params) if name == "official" else build_model(params, channels_last=channels_last)


def networks(params: dict[str, Any], channels_last: bool | None) -> dict[str, torch.nn.Module]:
    """NETWORKS, all holding the official network's weights."""
    nets = {name: build(name, params, channels_last) for name in NETWORKS}
    for name, net in nets.items():
        if name != "official":
            load_official_state_dict(net, nets["official"].state_dict())
    return nets


def inputs(params: dict[str, Any], batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    spec = torch.randn(batch, 4, params["num_frame"], params["n_fft"] // 2 + 1, generator=generator)
    return spec, torch.arange(batch) % 4


def runner(net: torch.nn.Module, spec: torch.Tensor, condition: torch.Tensor, mode: str) -> Callable[[], None]:
    """One forward (eval, inference_mode) or forward+backward (train) of ``net``."""
    net.train(mode == "fwd+bwd")

    def run() -> None:
        if mode == "forward":
            with torch.inference_mode():
                net(spec, condition)
        else:
            net.zero_grad(set_to_none=True)
            net(spec, condition).pow(2).mean().backward()

    return run


def time_interleaved(runs: dict[str, Callable[[], None]], repeats: int) -> dict[str, list[float]]:
    """One warm-up each, then ``repeats`` timed runs each, alternating which network goes first."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for i in range(1 + repeats):
        for name in names if i % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            runs[name]()
            if i > 0:
                times[name].append(time.perf_counter() - start)
    return times


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def threads(quick: bool) -> int:
    """Torch threads: one for the tiny config (its ops are too small to share, and on a loaded
    machine every parallel region waits for a descheduled thread)."""
    return 1 if quick else CPU_THREADS


def run_memory(
    network: str, params: dict[str, Any], batch: int, mode: str, channels_last: bool | None, quick: bool
) -> dict:
    """In a fresh process: peak RSS of one run above the RSS before it, in GB."""
    torch.set_num_threads(threads(quick))
    torch.manual_seed(0)
    net = build(network, params, channels_last)
    run = runner(net, *inputs(params, batch), mode)
    before = psutil.Process().memory_info().rss / 1e9
    run()
    return {"gb": peak_rss_gb() - before}


def forked(fn: Callable[..., dict], **kwargs: Any) -> dict:
    """Run ``fn(**kwargs)`` in a fresh process forked from a server that has imported torch, our
    model and the official one (a spawned process would spend seconds importing them)."""
    context = multiprocessing.get_context("forkserver")
    # The server inherits neither our sys.path nor (before Python 3.12) __main__; it inherits os.environ.
    python_path = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(OFFICIAL_PATHS + [p for p in python_path if p]))
    context.set_forkserver_preload(["torch", "lightsaft.model", *(module for module, _ in OFFICIAL.values())])
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        try:
            return pool.submit(fn, **kwargs).result()
        except BrokenProcessPool:
            return {"error": "worker died (killed for memory?)"}


def isolated(fn: Callable[..., dict], **kwargs: Any) -> dict:
    """Run ``fn(**kwargs)`` in a fresh spawned process (its own peak RSS / CUDA peak)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            return pool.submit(fn, **kwargs).result()
        except BrokenProcessPool:
            return {"error": "worker process died (killed for memory?)"}
        except torch.OutOfMemoryError as e:
            return {"error": f"out of memory: {str(e).splitlines()[0]}"}


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def quiet_openmp() -> None:
    """Idle OpenMP threads sleep instead of spinning: with spinning threads, processes sharing the
    2 cores stall each other (measured here: 2x slower seed forward, 150x slower tiny forward)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a / b:.2f}x"


def show(result: dict, key: str, unit: str = "", digits: int = 1) -> str:
    """A measured figure, or why there is none (skip reason / error)."""
    return result.get("skip") or result.get("error") or fmt(result[key], unit, digits)


def memory_case(params: dict[str, Any], batch: int, args: argparse.Namespace) -> dict[tuple[str, str], dict]:
    """Peak memory of each (mode, network), each in its own process."""
    memory = {}
    for mode in MODES:
        for name in NETWORKS:
            memory[mode, name] = forked(run_memory, network=name, params=params, batch=batch, mode=mode,
                                        channels_last=args.channels_last, quick=args.quick)  # fmt: skip
        print(f"  {mode} peak: " + "; ".join(f"{n} {show(memory[mode, n], 'gb', ' GB', 2)}" for n in NETWORKS))
    return memory


def time_case(params: dict[str, Any], batch: int, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Median time of each (mode, network), interleaved in this process."""
    torch.manual_seed(0)
    nets = networks(params, args.channels_last)
    spec, condition = inputs(params, batch)
    with torch.inference_mode():
        outputs = {name: net.eval()(spec, condition) for name, net in nets.items()}
    difference = max((out - outputs[NETWORKS[0]]).abs().max().item() for out in outputs.values())
    print(f"  {count_parameters(nets[NETWORKS[-1]]):,} parameters; largest forward difference {difference:.1e}")
    medians = {}
    for mode in MODES:
        times = time_interleaved({n: runner(net, spec, condition, mode) for n, net in nets.items()}, args.repeats)
        medians[mode] = {n: statistics.median(t) for n, t in times.items()}
        print(f"  {mode}: " + "; ".join(f"{n} " + " ".join(f"{t:.2f}" for t in times[n]) for n in nets), flush=True)
    del nets, outputs
    release_memory()
    return medians


def release_memory() -> None:
    """Give the freed heap back to the system (glibc keeps it otherwise): the machine is shared."""
    gc.collect()
    if sys.platform == "linux":
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def table_row(row: list, times: dict[str, float], memory: dict, mode: str, quick: bool) -> list:
    """Times, then peaks, of the reference network and of each other one with its ratio to it."""
    reference, others = NETWORKS[0], NETWORKS[1:]
    peaks = {n: memory[mode, n] for n in NETWORKS}
    row.append(fmt(times[reference], " s", 3 if quick else 2))
    for n in others:
        row += [fmt(times[n], " s", 3 if quick else 2), ratio(times[n], times[reference])]
    row.append(show(peaks[reference], "gb", " GB", 2))
    for n in others:
        row += [show(peaks[n], "gb", " GB", 2), ratio(peaks[n].get("gb"), peaks[reference].get("gb"))]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per network (median shown)")
    parser.add_argument("--quick", action="store_true", help="tiny config: a smoke run of this script (seconds)")
    parser.add_argument(
        "--channels-last",
        choices=CHANNELS_LAST,
        default="auto",
        help="our switch (auto: channels-last without autograd)",
    )
    args = parser.parse_args()
    args.channels_last = CHANNELS_LAST[args.channels_last]
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    quiet_openmp()
    torch.set_num_threads(threads(args.quick))
    config = "tiny config (--quick)" if args.quick else "seed / LaSAFT-large config"
    switch = {v: k for k, v in CHANNELS_LAST.items()}[args.channels_last]
    print(
        f"CPU, {config}, float32, {threads(args.quick)} threads ({os.cpu_count()} cores, "
        f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}), torch {torch.__version__}; our channels_last {switch}; "
        f"median of {args.repeats} interleaved runs after a warm-up. Load average at start {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    cases = [(label.split()[0] + " tiny" if args.quick else label, case_params(overrides, args.quick), batch)
             for label, overrides, batch in CASES]  # fmt: skip
    # Memory first, while this process is small: after timed runs its heap keeps GBs, which with a
    # child's peak could exhaust a shared machine's memory.
    memory = {}
    for label, params, batch in cases:
        print(f"{label}, B={batch}", flush=True)
        memory[label, batch] = memory_case(params, batch, args)
    rows = []
    for label, params, batch in cases:
        print(f"{label}, B={batch}", flush=True)
        medians = time_case(params, batch, args)
        rows += [
            table_row([label, batch, mode], medians[mode], memory[label, batch], mode, args.quick) for mode in MODES
        ]
    print(f"load average at end {os.getloadavg()[0]:.1f}\n")
    reference, others = NETWORKS[0], NETWORKS[1:]
    headers = (
        ["model", "B", "mode", reference]
        + [c for n in others for c in (n, f"{n}/{reference}")]
        + [f"{reference} peak"]
        + [c for n in others for c in (f"{n} peak", f"{n}/{reference}")]
    )
    print(tabulate(rows, headers=headers, stralign="right"))
    print("peak = the run's peak RSS above the process's RSS before it, one process per network and row")


if __name__ == "__main__":
    main()
