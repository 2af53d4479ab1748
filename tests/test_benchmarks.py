"""Benchmarks cannot rot: each one's quick mode runs to its table (figures are not asserted)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO, SHARED, shared_path


def run_benchmark(script: str, *args: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), LIGHTSAFT_SHARED=str(SHARED))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"{script} {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.slow
def test_model_speed_quick():
    shared_path("reference", "official_src", "lasaft")
    out = run_benchmark("model_speed.py", "--quick")
    header = next(line for line in out.splitlines() if line.lstrip().startswith("model"))
    assert header.split() == ["model", "B", "mode", "official", "ours", "ours/official", "official", "peak",
                              "ours", "peak", "ours/official"]  # fmt: skip
    for model, batch in (("LightSAFT tiny", "2"), ("LightSAFT tiny", "4"), ("LaSAFT tiny", "2")):
        for mode in ("forward", "fwd+bwd"):
            assert any(line.split()[:4] == [*model.split(), batch, mode] for line in out.splitlines()), (model, mode)


@pytest.mark.slow
def test_gpu_check_dry_run():
    out = run_benchmark("gpu_check.py", "--dry-run")
    lines = out.splitlines()
    assert lines[1].split() == ["check", "config", "setting", "result", "peak", "GPU", "memory"]
    assert sum(line.startswith("train ") for line in lines) == 12  # 2 configs x 3 precisions x channels_last
    assert sum(line.startswith("separate ") for line in lines) == 2
    assert any(line.startswith("bss_eval_v4 ") for line in lines)
    # The script refuses (exit code 1) when it has imported any of them; say which were checked.
    assert lines[-1] == "imports: none of soundfile, mlflow, dvc, museval"
