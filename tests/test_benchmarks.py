"""Benchmarks cannot rot: each one's quick mode runs to the end and prints its table.

Timings are never asserted (they belong to the benchmark output); only that the script still
runs against today's code and prints its table. The quick modes run in this process (a fresh
interpreter would spend 5-10 s importing torch before a quick mode's few seconds of work); the two
that must start their own are the official networks' comparison and the GPU script's dry run.
"""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
import tempfile

import pytest
import torch
from helpers import REPO, SHARED

# (script, a line of its table's header); slow: museval (bsseval) or the separation and scoring of
# a track (separate_eval) take 10-30 s on a loaded 2-core machine (separate_memory starts two
# processes, separate_disk trains a tiny model), the others a few seconds.
BENCHMARKS = [
    pytest.param("loader.py", "batches/s by loader", id="loader"),
    pytest.param("train_speed.py", "warm-up + timed", id="train_speed"),
    pytest.param("prepare_speed.py", "audio s per s", id="prepare_speed"),
    pytest.param("separate_eval.py", "s per audio s", id="separate_eval", marks=pytest.mark.slow),
    pytest.param("bsseval.py", "max |diff| dB", id="bsseval", marks=pytest.mark.slow),
    pytest.param("stats_calibration.py", "false-positive rate", id="stats_calibration"),
    pytest.param("window_edges.py", "frames that differ: [0, 1, 126, 127] of 128", id="window_edges"),
    pytest.param("separate_memory.py", "peak / shortest", id="separate_memory", marks=pytest.mark.slow),
    pytest.param("separate_disk.py", "kB per s of audio", id="separate_disk", marks=pytest.mark.slow),
]


def run_in_process(script: str, tmp_path, monkeypatch, capsys, *args: str) -> str:
    """``benchmarks/<script> args`` as ``__main__`` in this process, in ``tmp_path`` (also its
    temporary folder); sys.path and torch's thread count are restored afterwards, the benchmarks'
    shared module (model_speed, which puts the official package on sys.path) forgotten."""
    monkeypatch.setattr(sys, "path", [str(REPO / "benchmarks"), *sys.path])
    monkeypatch.setattr(sys, "argv", [script, *args])
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    try:
        runpy.run_path(str(REPO / "benchmarks" / script), run_name="__main__")
    finally:
        torch.set_num_threads(threads)
        sys.modules.pop("model_speed", None)
    return capsys.readouterr().out


def run_benchmark(tmp_path, script: str, *args: str) -> str:
    """``benchmarks/<script> args`` in a fresh process (for those that need one)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
        "LIGHTSAFT_SHARED": str(SHARED),
        "OMP_WAIT_POLICY": "PASSIVE",  # as `make test`: spinning OpenMP threads stall a shared machine
        "TMPDIR": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"{script} {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.parametrize(("script", "header"), BENCHMARKS)
def test_benchmark_quick_mode_runs(script, header, tmp_path, monkeypatch, capsys):
    assert header in run_in_process(script, tmp_path, monkeypatch, capsys, "--quick")


@pytest.mark.slow  # its own process: it puts the official package on sys.path and measures in child processes
def test_model_speed_quick(tmp_path):
    """Ours and the official networks side by side (the official package of ../shared; the
    benchmark alone knows where it lies, and exits naming it when it is missing)."""
    out = run_benchmark(tmp_path, "model_speed.py", "--quick")
    header = next(line for line in out.splitlines() if line.lstrip().startswith("model"))
    assert header.split() == ["model", "B", "mode", "official", "ours", "ours/official", "official", "peak",
                              "ours", "peak", "ours/official"]  # fmt: skip
    for model, batch in (("LightSAFT tiny", "2"), ("LightSAFT tiny", "4"), ("LaSAFT tiny", "2")):
        for mode in ("forward", "fwd+bwd"):
            assert any(line.split()[:4] == [*model.split(), batch, mode] for line in out.splitlines()), (model, mode)


@pytest.mark.slow  # its own process: it checks which modules it imported
def test_gpu_check_dry_run(tmp_path):
    """The script prepared for a lent GPU machine, on the CPU with the tiny config."""
    lines = run_benchmark(tmp_path, "gpu_check.py", "--dry-run").splitlines()
    assert lines[1].split() == ["check", "config", "setting", "result", "peak", "GPU", "memory"]
    assert sum(line.startswith("train ") for line in lines) == 12  # 2 configs x 3 precisions x channels_last
    assert sum(line.startswith("separate ") for line in lines) == 2
    assert any(line.startswith("bss_eval_v4 ") for line in lines)
    # The script refuses (exit code 1) when it has imported any of them; say which were checked.
    assert lines[-1] == "imports: none of soundfile, mlflow, dvc, museval"
