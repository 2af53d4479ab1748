"""A training stopped in the middle: Ctrl+C, SIGTERM or SIGKILL leave nothing that DVC would take
as complete and never an MLflow run RUNNING for good; the rerun with ``runtime.train.resume``
continues in the same run and ends as an uninterrupted training would.

Tested once per layer. In this process: the training run's record (:class:`TrainingRun`), and the
real ``pipeline/train.py`` (helpers.run_stage_in_process) sent a signal where a function of the
training has done its work, which the stage's and Lightning's handlers take as in a process of
their own. Then one real stage process per signal kind (helpers.kill_while_working: exit status,
message, no process left), each resumed in this process. The checkpoint a resume picks:
tests/test_train.py; under DDP: tests/test_ddp.py; SLURM's requeue: tests/test_slurm.py.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
import yaml
from helpers import (
    EPOCH_CHECKPOINT,
    kill_while_working,
    make_project,
    mlflow_runs,
    run_stage_in_process,
    signal_in_process,
    training_project,
)
from mlflow.tracking import MlflowClient

from lightsaft.errors import Terminated
from lightsaft.tracking.training_run import TrainingRun
from lightsaft.train import INTERRUPTED

# The first training step has run (the first epoch checkpoint is 8 steps away).
FIRST_STEP = "lightsaft.training.lightning_module:LightSAFTModule.training_step"
# A training batch has ended (its optimizer step done).
BATCH_END = "pytorch_lightning.callbacks:ModelCheckpoint.on_train_batch_end"
# The MLflow run is open and recorded; Lightning has not started.
RUN_OPENED = "lightsaft.tracking.training_run:TrainingRun.logger"
EPOCHS, STEPS_PER_EPOCH = 3, 8  # helpers.training_project: 8 steps an epoch


def checkpoints(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob(".lightsaft/train/*/checkpoints/*.ckpt"))


def nothing_finished(root: Path) -> bool:
    return not any((root / d).exists() for d in ("models", "metrics", "plots"))


def resumed_in_the_same_run(root: Path, params: dict, experiment: str, run_id: str) -> None:
    """``runtime.train.resume``, in this process: the same MLflow run continues and FINISHES, with
    every epoch's curve and validation, and as many steps as an uninterrupted training."""
    params["runtime"]["train"]["resume"] = True
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    run_stage_in_process(root, "train")
    [run] = mlflow_runs(root, experiment)
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert json.loads((root / "models" / "mlflow_run.json").read_text())["run_id"] == run_id
    curves = (root / "plots" / "train_curves.csv").read_text().splitlines()[1:]
    assert [int(line.split(",")[0]) for line in curves] == list(range(EPOCHS))
    assert json.loads((root / "metrics" / "train.json").read_text())["steps"] == EPOCHS * STEPS_PER_EPOCH
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    val_steps = sorted(m.step for m in client.get_metric_history(run_id, "val_loss"))
    assert val_steps == [STEPS_PER_EPOCH * (e + 1) - 1 for e in range(EPOCHS)]
    assert checkpoints(root) == []  # the training's folder is gone


# ---------------------------------------------------------------------------------------
# In this process
def test_a_training_run_ends_killed_or_failed_and_one_killed_outright_is_abandoned(tmp_path, monkeypatch):
    """Ctrl+C and SIGTERM end the run KILLED (resumable), an error FAILED; a run left RUNNING (its
    process killed outright: SIGKILL runs no code) is marked KILLED by the next start; a resume
    reopens the recorded run."""
    monkeypatch.setenv("DVC_ROOT", str(make_project(tmp_path, mlflow_db=True)))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    runs = {}
    for name, error in (("ctrl-c", KeyboardInterrupt()), ("sigterm", Terminated()), ("error", RuntimeError("x"))):
        runs[name] = TrainingRun.open(tmp_path / name, False, "ends", name, {"train.lr": 0.001}, {})
        runs[name].end_interrupted(error)
    killed = TrainingRun.open(tmp_path / "killed", False, "ends", "killed", {}, {})
    killed.monitor.finish()  # what SIGKILL leaves: the run RUNNING, its record written
    client = killed.client
    status = {name: client.get_run(run.run_id).info for name, run in runs.items()}
    assert {name: info.status for name, info in status.items()} == {
        "ctrl-c": "KILLED",
        "sigterm": "KILLED",
        "error": "FAILED",
    }
    assert all(info.end_time is not None for info in status.values())
    assert client.get_run(killed.run_id).info.status == "RUNNING"

    TrainingRun.abandon(tmp_path / "killed")
    assert client.get_run(killed.run_id).info.status == "KILLED"
    client.set_terminated(runs["error"].run_id, "FINISHED")  # a run that ended is left as it is
    TrainingRun.abandon(tmp_path / "error")
    assert client.get_run(runs["error"].run_id).info.status == "FINISHED"
    TrainingRun.abandon(tmp_path / "never-started")  # no record: nothing to do

    again = TrainingRun.open(tmp_path / "ctrl-c", True, "ends", "ctrl-c", {}, {})
    assert again.run_id == runs["ctrl-c"].run_id and client.get_run(again.run_id).info.status == "RUNNING"
    again.end_interrupted(KeyboardInterrupt())


def test_ctrl_c_before_fit_ends_the_run_killed_and_leaves_no_checkpoint(tmp_path, synthetic_cache, monkeypatch, capsys):
    root = tmp_path
    training_project(root, synthetic_cache, EPOCHS, "before-fit")
    signal_in_process(root, "train", RUN_OPENED, signal.SIGINT, monkeypatch, capsys)  # exit 130, one line
    [run] = mlflow_runs(root, "before-fit")
    assert run.info.status == "KILLED" and run.info.end_time is not None
    assert checkpoints(root) == [] and nothing_finished(root)


@pytest.mark.parametrize(
    "sig,pause_at,calls",
    [
        (signal.SIGINT, BATCH_END, 3),  # Ctrl+C between two batches
        (signal.SIGTERM, FIRST_STEP, 1),  # in a step: Lightning stops at the end of the batch
    ],
    ids=["sigint", "sigterm"],
)
def test_ctrl_c_or_sigterm_mid_epoch_saves_where_training_stood_and_the_rerun_resumes_it(
    tmp_path, synthetic_cache, monkeypatch, capsys, sig, pause_at, calls
):
    """Before the first epoch checkpoint: the interrupt checkpoint holds where training stood, the
    run ends KILLED, and the resume finishes it as an uninterrupted training."""
    root = tmp_path
    experiment = f"stopped-{sig.name.lower()}"
    params = training_project(root, synthetic_cache, EPOCHS, experiment)
    signal_in_process(root, "train", pause_at, sig, monkeypatch, capsys, calls)  # exit 130 / 143, one line
    assert checkpoints(root) == [INTERRUPTED] and nothing_finished(root)
    [run] = mlflow_runs(root, experiment)
    assert run.info.status == "KILLED" and run.info.end_time is not None
    resumed_in_the_same_run(root, params, experiment, run.info.run_id)


# ---------------------------------------------------------------------------------------
# One real stage process per signal kind
@pytest.mark.slow  # the train stage in a process of its own (an interpreter importing torch)
@pytest.mark.parametrize(
    "sig,pause_at,delay",
    [
        (signal.SIGINT, EPOCH_CHECKPOINT, 600),  # waiting at the end of its first epoch
        (signal.SIGTERM, FIRST_STEP, 0.3),  # training, each step slowed: Lightning stops at the next batch
        (signal.SIGKILL, EPOCH_CHECKPOINT, 600),  # no code runs: no interrupt checkpoint, the run RUNNING
    ],
    ids=["sigint", "sigterm", "sigkill"],
)
def test_train_stage_stopped_by_a_real_signal_resumes_in_the_same_run(tmp_path, synthetic_cache, sig, pause_at, delay):
    root = tmp_path / "project"
    experiment = f"real-{sig.name.lower()}"
    params = training_project(root, synthetic_cache, EPOCHS, experiment)
    kill_while_working(root, "train", pause_at, sig, delay=delay)  # exit status, message, no process left
    assert nothing_finished(root)
    [run] = mlflow_runs(root, experiment)
    if sig == signal.SIGKILL:
        assert run.info.status == "RUNNING" and INTERRUPTED not in checkpoints(root)
        # Started again without resume (or with nothing to resume), the training marks it KILLED
        # and opens a run of its own.
        again = shutil.copytree(root, tmp_path / "again", symlinks=True)
        run_stage_in_process(again, "train")
        runs = {r.info.run_id: r.info.status for r in mlflow_runs(again, experiment)}
        assert runs.pop(run.info.run_id) == "KILLED" and list(runs.values()) == ["FINISHED"]
        assert json.loads((again / "models" / "mlflow_run.json").read_text())["run_id"] in runs
    else:
        assert run.info.status == "KILLED" and run.info.end_time is not None
        assert INTERRUPTED in checkpoints(root)
    resumed_in_the_same_run(root, params, experiment, run.info.run_id)
