"""Distributed training (DDP) on CPUs: ranks known before anything happens, SyncBatchNorm refused
without a GPU, and the train stage run as the processes of a real launch: on one machine with two
devices, and on two simulated ones, terminated, resumed and evaluated (the one DDP training that
is interrupted: a training stopped and resumed is otherwise tested in
tests/reliability/test_interrupted_training.py).

The end-to-end tests run ``pipeline/train.py`` through ``tests/ddp_runner.py``, which records each
process's item draws and its MLflow and output calls. Backend gloo, one thread per rank, and a
60-second process-group timeout, so that a lost rank fails a test instead of hanging it.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import psutil
import pytest
import pytorch_lightning as pl
import torch
import yaml
from helpers import REPO, make_project, run_stage_in_process, tiny_params, training_project
from mlflow.tracking import MlflowClient

from lightsaft.config import validate
from lightsaft.errors import ConfigError
from lightsaft.train import train
from lightsaft.training.ranks import global_rank
from lightsaft.weights.ours import load_weights

RUNNER = REPO / "tests" / "ddp_runner.py"
LAUNCH_VARS = (
    "RANK",
    "LOCAL_RANK",
    "NODE_RANK",
    "GROUP_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
)


def without_launcher(env: dict[str, str]) -> dict[str, str]:
    """The environment minus anything a launcher (or this test's tracking setup) would have set."""
    drop = ("MLFLOW_TRACKING_URI", "DVC_ROOT", *LAUNCH_VARS)
    return {k: v for k, v in env.items() if k not in drop and not k.startswith("SLURM_")}


@pytest.fixture
def clean_env(monkeypatch):
    """No launcher variables; the test may set its own. Everything is restored afterwards, also
    what building a Trainer changes (the environment, Lightning's process-wide rank)."""
    saved = dict(os.environ)
    monkeypatch.setattr(pl.utilities.rank_zero.rank_zero_only, "rank", 0)
    os.environ.clear()
    os.environ.update(without_launcher(saved))
    yield
    os.environ.clear()
    os.environ.update(saved)


# ---------------------------------------------------------------------------------------
# Ranks before the Trainer exists
TORCHRUN = {"RANK": "3", "LOCAL_RANK": "1", "GROUP_RANK": "1", "LOCAL_WORLD_SIZE": "2", "WORLD_SIZE": "4"}
SLURM = {
    "SLURM_NTASKS": "4",
    "SLURM_NTASKS_PER_NODE": "2",
    "SLURM_NNODES": "2",
    "SLURM_PROCID": "3",
    "SLURM_LOCALID": "1",
    "SLURM_NODEID": "1",
    "SLURM_JOB_NAME": "train",
    "SLURM_NODELIST": "node[0-1]",
}


@pytest.mark.parametrize(
    "env,expected",
    [
        ({}, 0),
        ({"NODE_RANK": "1"}, 2),  # Lightning's launcher, first process of node 1: took itself for rank 0
        ({"NODE_RANK": "1", "LOCAL_RANK": "1"}, 3),  # the process Lightning started beside it
        ({"NODE_RANK": "0", "LOCAL_RANK": "1"}, 1),
        ({**TORCHRUN, "TORCHELASTIC_RUN_ID": "job"}, 3),
        (SLURM, 3),
        ({**SLURM, "SLURM_JOB_NAME": "bash", "NODE_RANK": "1"}, 2),  # interactive: not SLURM's launch
    ],
    ids=["alone", "node1", "node1-local1", "node0-local1", "torchrun", "slurm", "slurm-interactive"],
)
def test_global_rank_from_the_environment_agrees_with_lightning(clean_env, env, expected):
    os.environ.update(env)
    assert global_rank(devices_per_node=2) == expected
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, num_nodes=2, strategy="ddp", logger=False, enable_progress_bar=False
    )
    assert trainer.global_rank == expected


def test_sync_batchnorm_without_gpu_is_refused_before_anything_is_created(
    tmp_path, synthetic_cache, monkeypatch, clean_env
):
    """SyncBatchNorm runs on CUDA GPUs only: refused when the params are read (accelerator cpu),
    or when training starts on a machine without a GPU (auto), before any run, lock or folder."""
    cpu = tiny_params()
    cpu["trainer"]["sync_batchnorm"] = True
    with pytest.raises(ConfigError, match=r"trainer.sync_batchnorm = True: with trainer.accelerator = 'cpu'"):
        validate(cpu)
    root = make_project(tmp_path / "project")
    monkeypatch.setenv("DVC_ROOT", str(root))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    params = tiny_params(**{"trainer.accelerator": "auto", "trainer.sync_batchnorm": True})
    with pytest.raises(ConfigError, match="'auto' finds no CUDA GPU on this machine"):
        train(params, synthetic_cache)
    assert [p.name for p in root.iterdir()] == [".dvc"]  # no MLflow database, lock or checkpoint folder


# ---------------------------------------------------------------------------------------
# End to end: one machine with two devices, two machines with one each
LAYOUTS = {"one-node-two-devices": (1, 2), "two-nodes-one-device-each": (2, 1)}
STEPS_PER_EPOCH, EPOCHS = 2, 3  # 32 items an epoch, 16 per rank, batches of 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(root: Path, nodes: int, records: Path, step_s: float) -> list[subprocess.Popen]:
    """The training's launching processes, one per node, as a user starts them on each machine
    (Lightning's launcher starts the other local ranks); output in ``node<N>.log``."""
    records.mkdir(parents=True)
    env = without_launcher(dict(os.environ)) | {
        "OMP_NUM_THREADS": "1",
        "LIGHTSAFT_TEST_RECORDS": str(records),
        "LIGHTSAFT_TEST_STEP_S": str(step_s),
    }
    if nodes > 1:
        env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    procs = []
    for node in range(nodes):
        node_env = env | ({"NODE_RANK": str(node)} if nodes > 1 else {})
        with open(root / f"node{node}.log", "a") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(RUNNER)], cwd=root, env=node_env, stdout=log, stderr=subprocess.STDOUT
                )
            )
    return procs


def logs(root: Path) -> str:
    return "".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(root.glob("node*.log")))


def every_process(procs: list[subprocess.Popen]) -> list[psutil.Process]:
    found = []
    for proc in procs:
        try:
            parent = psutil.Process(proc.pid)
            found += [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    return found


def wait_all(root: Path, procs: list[subprocess.Popen], timeout: float = 600) -> list[int]:
    deadline = time.monotonic() + timeout
    try:
        return [proc.wait(timeout=max(1, deadline - time.monotonic())) for proc in procs]
    except subprocess.TimeoutExpired:
        pytest.fail(f"the training did not end within {timeout} s\n{logs(root)}")
    finally:
        for process in every_process(procs):
            process.kill()


def read_records(records: Path) -> dict[int, dict[str, list]]:
    """rank -> event -> records, each process's rank told by its draws (after the process group
    exists); records of processes that drew nothing stay under -1."""
    by_pid = {p.stem: [json.loads(line) for line in p.read_text().splitlines()] for p in records.glob("*.jsonl")}
    out: dict[int, dict[str, list]] = {}
    for events in by_pid.values():
        ranks = {e["rank"] for e in events if e["event"] == "draw"}
        assert len(ranks) <= 1, ranks
        grouped = defaultdict(list)
        for e in events:
            grouped[e["event"]].append(e)
        rank = ranks.pop() if ranks else -1
        assert rank not in out, f"two processes drew as rank {rank}"
        out[rank] = grouped
    return out


def check_records(records: Path, outputs_written: bool) -> dict[int, dict[str, list]]:
    """Both ranks drew, different items, as many each; only rank zero opened the MLflow run and
    wrote the outputs, once."""
    seen = read_records(records)
    assert set(seen) == {0, 1}, {rank: dict(events) for rank, events in seen.items()}
    draws = [[(d["condition"], d["tracks"], d["offsets"]) for d in seen[rank]["draw"]] for rank in (0, 1)]
    assert draws[0] and len(draws[0]) == len(draws[1]) and len(draws[0]) % 8 == 0
    assert not {json.dumps(d) for d in draws[0]} & {json.dumps(d) for d in draws[1]}
    assert len(seen[0]["mlflow_run"]) == 1 and not seen[1]["mlflow_run"]
    assert len(seen[0]["write_outputs"]) == int(outputs_written) and not seen[1]["write_outputs"]
    return seen


def only_run(root: Path):
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    training = [r for r in runs if r.data.tags.get("stage") == "train"]
    assert len(training) == 1, [(r.info.run_name, r.data.tags.get("stage")) for r in runs]
    return client, training[0], runs


def ddp_project(root: Path, cache: Path, nodes: int, devices: int) -> dict:
    return training_project(
        root,
        cache,
        EPOCHS,
        "ddp",
        **{
            "train.items_per_epoch": 32,
            "train.early_stop_patience": None,
            "trainer.devices": devices,
            "trainer.num_nodes": nodes,
            "trainer.strategy": "ddp",
            "trainer.log_every_n_steps": 1,
            "runtime.train.ddp_timeout_s": 60,
            "runtime.separate.batch_size": 64,
        },
    )


def check_finished(root: Path, run_id: str) -> None:
    """The run FINISHED with every epoch's validation and curve, the outputs written once."""
    client, run, _ = only_run(root)
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert json.loads((root / "models" / "mlflow_run.json").read_text())["run_id"] == run_id
    metrics = json.loads((root / "metrics" / "train.json").read_text())
    assert (metrics["epochs"], metrics["steps"]) == (EPOCHS, EPOCHS * STEPS_PER_EPOCH)
    val_steps = sorted(m.step for m in client.get_metric_history(run_id, "val_loss"))
    assert val_steps == [STEPS_PER_EPOCH * (e + 1) - 1 for e in range(EPOCHS)]
    curves = (root / "plots" / "train_curves.csv").read_text().splitlines()
    assert [int(line.split(",")[0]) for line in curves[1:]] == list(range(EPOCHS))
    assert all(0 < float(line.split(",")[5]) < 600 for line in curves[1:])  # epoch_time_s, also when resumed
    load_weights(root / "models" / "weights.pt")
    checkpoint = torch.load(root / "models" / "best.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["state_dict"] and not any("EarlyStopping" in key for key in checkpoint["callbacks"])
    assert not any((root / ".lightsaft" / "train").iterdir())  # the training's folder is gone


@pytest.mark.slow  # one training of two processes: about a minute on 2 cores
def test_ddp_training_on_one_node_with_two_devices(tmp_path, synthetic_cache, clean_env):
    """Lightning's launcher starts the second rank by running the stage's command again."""
    root = tmp_path / "project"
    ddp_project(root, synthetic_cache, *LAYOUTS["one-node-two-devices"])
    procs = launch(root, 1, root / "records", step_s=0)
    assert wait_all(root, procs) == [0], logs(root)
    check_records(root / "records", outputs_written=True)
    _, run, _ = only_run(root)
    check_finished(root, run.info.run_id)


@pytest.mark.slow  # two trainings of two processes each: 2 to 4 minutes on 2 cores
def test_ddp_training_terminated_resumed_and_evaluated(tmp_path, synthetic_cache, clean_env):
    """Two machines with one device each (one working directory: a shared file system): the
    SIGTERM that one of them gets stops both (Lightning's own handling broadcasts from inside the
    handler and can hang: see training/callbacks.StopTogether)."""
    nodes, devices = LAYOUTS["two-nodes-one-device-each"]
    root = tmp_path / "project"
    params = ddp_project(root, synthetic_cache, nodes, devices)

    # 1. SIGTERM to the launching process of node 0 (rank 0) alone, in the middle of epoch 1:
    # every rank stops at the same batch, the interrupted state is saved, nothing looks finished.
    procs = launch(root, nodes, root / "records" / "first", step_s=1.0)
    deadline = time.monotonic() + 600
    while not list(root.glob(".lightsaft/train/*/checkpoints/last.ckpt")):
        assert all(p.poll() is None for p in procs) and time.monotonic() < deadline, logs(root)
        time.sleep(0.1)
    procs[0].send_signal(signal.SIGTERM)
    assert wait_all(root, procs, timeout=300) == [143] * nodes, logs(root)
    assert logs(root).count("train: terminated") == 2 and "Traceback" not in logs(root), logs(root)
    assert not any((root / d).exists() for d in ("models", "metrics", "plots"))
    assert list(root.glob(".lightsaft/train/*/checkpoints/interrupted.ckpt"))
    _, run, _ = only_run(root)
    assert run.info.status == "KILLED"
    check_records(root / "records" / "first", outputs_written=False)

    # 2. The rerun with runtime.train.resume continues the same training, in the same MLflow run.
    params["runtime"]["train"]["resume"] = True
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    procs = launch(root, nodes, root / "records" / "resumed", step_s=0)
    assert wait_all(root, procs) == [0] * nodes, logs(root)
    check_records(root / "records" / "resumed", outputs_written=True)
    check_finished(root, run.info.run_id)

    # 3. An evaluation follows, recorded under the training's run.
    for stage in ("separate", "evaluate"):
        run_stage_in_process(root, stage)
    sdr = json.loads((root / "metrics" / "sdr.json").read_text())
    assert sdr and all(math.isfinite(v) for v in sdr.values()), sdr
    _, _, runs = only_run(root)
    [evaluation] = [r for r in runs if r.data.tags.get("stage") == "evaluate"]
    assert evaluation.data.tags["mlflow.parentRunId"] == run.info.run_id
