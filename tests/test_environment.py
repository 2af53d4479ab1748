"""A stage run by an interpreter without the project's packages stops with one line saying what to do."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import REPO


@pytest.mark.parametrize("stage", ["download", "train"])
def test_a_bare_interpreter_gets_one_line_not_a_traceback(tmp_path, stage):
    """``python -S``: this interpreter without its site-packages, as a system python would be when
    `.venv/bin/dvc repro` runs the stages without the environment activated."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(
        [sys.executable, "-S", str(REPO / "pipeline" / f"{stage}.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: {REPO / 'pipeline' / stage}.py: {sys.executable} lacks the project's")
    assert "torch" in done.stderr and "source .venv/bin/activate" in done.stderr
    assert not (tmp_path / "data").exists()
