"""Benchmarks cannot rot: each one's --quick mode runs to the end and prints its table.

Timings are never asserted (they belong to the benchmark output); only that the script still
runs against today's code and prints the header of its table.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import REPO

# (script, a line of its table's header); slow: over 20 s on a loaded 2-core machine (museval and
# the evaluate stage's worker process dominate), 7-18 s for the others.
BENCHMARKS = [
    pytest.param("loader.py", "batches/s by loader", id="loader"),
    pytest.param("train_speed.py", "warm-up + timed", id="train_speed"),
    pytest.param("prepare_speed.py", "audio s per s", id="prepare_speed"),
    pytest.param("separate_eval.py", "s per audio s", id="separate_eval", marks=pytest.mark.slow),
    pytest.param("bsseval.py", "max |diff| dB", id="bsseval", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("script", "header"), BENCHMARKS)
def test_benchmark_quick_mode_runs(script, header, tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
        "OMP_WAIT_POLICY": "PASSIVE",  # as `make test`: spinning OpenMP threads stall a shared machine
        "TMPDIR": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), "--quick"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert header in done.stdout, output[-3000:]
