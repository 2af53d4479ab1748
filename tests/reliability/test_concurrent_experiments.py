"""Queued experiments running at once (``dvc queue start -j 2``): they share one SQLite MLflow
database (no "database is locked", no lost params or metrics, even when they all create it at the
same moment), and the same experiment queued twice cannot destroy the first one's checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import EPOCH_CHECKPOINT, after_call, make_project, mlflow_runs, train_into, training_project
from mlflow.tracking import MlflowClient

from lightsaft.errors import LightSAFTError
from lightsaft.train import train

WRITERS, STEPS, PARAMS, BATCH = 4, 200, 120, 150

# One experiment's worth of tracking: what the train and evaluate stages do, condensed.
WRITER = f"""
import sys, time
from pathlib import Path
from lightsaft.tracking import records, store
go, index = Path(sys.argv[1]), int(sys.argv[2])
while not go.exists():
    time.sleep(0.01)
client = store.client()
run = client.create_run(store.experiment_id(client, "queued"), run_name=f"writer-{{index}}").info.run_id
store.log_params(client, run, {{f"p.{{k}}": k * index for k in range({PARAMS})}})
for step in range({STEPS}):
    client.log_metric(run, "loss", index + 1 / (step + 1), step=step)
store.log_metrics(client, run, {{f"test_m{{k}}": k + index for k in range({BATCH})}})
client.set_terminated(run, "FINISHED")
print(run)
"""


@pytest.mark.slow  # four processes of their own (each imports torch with the tracking code)
def test_concurrent_writers_lose_nothing(tmp_path):
    root = make_project(tmp_path)  # no database: they all create it
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["DVC_ROOT"] = str(root)
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(go), str(i)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(WRITERS)
    ]
    go.touch()  # all start together, against a database that does not exist yet
    results = [p.communicate(timeout=600) for p in procs]
    for proc, (_, err) in zip(procs, results):
        assert proc.returncode == 0 and "locked" not in err, err[-3000:]

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    [experiment] = [e for e in client.search_experiments() if e.name == "queued"]
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == [f"writer-{i}" for i in range(WRITERS)]
    for i in range(WRITERS):
        run = runs[f"writer-{i}"]
        assert run.info.run_id == results[i][0].split()[-1] and run.info.status == "FINISHED"
        assert run.data.params == {f"p.{k}": str(k * i) for k in range(PARAMS)}
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss"))
        assert history == [(step, i + 1 / (step + 1)) for step in range(STEPS)]
        assert {k: v for k, v in run.data.metrics.items() if k.startswith("test_")} == {
            f"test_m{k}": float(k + i) for k in range(BATCH)
        }


def test_the_same_training_twice_at_once_is_refused(tmp_path, monkeypatch, synthetic_cache):
    """Both would share (and finally delete) one checkpoint folder: the second stops at once. The
    first trains in this process; the second starts when the first has written its first epoch's
    checkpoints (the lock is an flock, held per open file: a start in this process is refused as
    one in another process would be)."""
    root = tmp_path
    params = training_project(root, synthetic_cache, epochs=2, experiment="twice")
    monkeypatch.setenv("DVC_ROOT", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    refused = []

    def second_start():
        checkpoints = sorted((root / ".lightsaft" / "train").rglob("*.ckpt"))
        assert "last.ckpt" in [p.name for p in checkpoints]  # the first training is under way
        with pytest.raises(LightSAFTError, match="another training of this configuration is running"):
            train(params, root / "data" / "cache")
        assert sorted((root / ".lightsaft" / "train").rglob("*.ckpt")) == checkpoints
        refused.append(True)

    after_call(monkeypatch, EPOCH_CHECKPOINT, second_start)
    assert train_into(root, params, root / "data" / "cache")["epochs"] == 2  # the first goes on to the end
    assert refused == [True]
    assert len(mlflow_runs(root, "twice")) == 1
