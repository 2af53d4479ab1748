"""A training stopped before its first checkpoint never leaves its MLflow run RUNNING for good:
Ctrl+C or SIGTERM end it as KILLED at once; after SIGKILL (no code runs) the next start of the
same training marks it KILLED before it opens its own run.

The real ``pipeline/train.py`` runs in its own process, paused or slowed at a chosen function
(helpers.start_paused), so each signal lands where the test says, never by timing luck.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from helpers import kill_while_working, mlflow_runs, run_stage, training_project

# The first training step has run (the first epoch checkpoint is 8 steps away).
FIRST_STEP = "lightsaft.training.lightning_module:LightSAFTModule.training_step"
# The MLflow run is open and recorded; Lightning has not started.
RUN_OPENED = "lightsaft.tracking.training_run:TrainingRun.logger"


def epoch_checkpoints(root: Path) -> list[str]:
    """Checkpoints written at the end of an epoch (not the one an interrupt writes)."""
    return [p.name for p in root.glob(".lightsaft/train/*/checkpoints/*.ckpt") if p.name != "interrupted.ckpt"]


def test_sigkill_before_the_first_checkpoint_is_marked_killed_by_the_next_start(tmp_path, synthetic_cache):
    root = tmp_path
    training_project(root, synthetic_cache, epochs=1, experiment="sigkill-early")
    kill_while_working(root, "train", FIRST_STEP, signal.SIGKILL)
    assert epoch_checkpoints(root) == []
    [killed] = mlflow_runs(root, "sigkill-early")
    assert killed.info.status == "RUNNING"  # nothing could run to close it

    run_stage(root, "train")  # the same training again, not resumed (there is nothing to resume)
    runs = {r.info.run_id: r for r in mlflow_runs(root, "sigkill-early")}
    assert runs.pop(killed.info.run_id).info.status == "KILLED"
    [new] = runs.values()
    assert new.info.status == "FINISHED"
    assert json.loads((root / "models" / "mlflow_run.json").read_text())["run_id"] == new.info.run_id


@pytest.mark.parametrize(
    "sig,pause_at,delay",
    [
        (signal.SIGINT, RUN_OPENED, 600),  # between opening the run and training
        (signal.SIGINT, FIRST_STEP, 0.3),  # training, each step slowed
        (signal.SIGTERM, FIRST_STEP, 0.3),  # Lightning stops at the next batch boundary
    ],
    ids=["sigint-before-fit", "sigint-training", "sigterm-training"],
)
def test_ctrl_c_or_sigterm_before_the_first_checkpoint_ends_the_run_killed(
    tmp_path, synthetic_cache, sig, pause_at, delay
):
    root = tmp_path
    experiment = f"stopped-{sig.name.lower()}"
    training_project(root, synthetic_cache, epochs=1, experiment=experiment, **{"train.items_per_epoch": 256})
    kill_while_working(root, "train", pause_at, sig, delay=delay)  # exit code and message checked there
    assert epoch_checkpoints(root) == []
    [run] = mlflow_runs(root, experiment)
    assert run.info.status == "KILLED"
    assert run.info.end_time is not None
    assert not (root / "models").exists() and not (root / "metrics").exists()
