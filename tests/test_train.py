"""Training: the loss falls, outputs and MLflow records exist, bf16 works on CPU, resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from conftest import REPO, make_project, tiny_params, train_into
from mlflow.tracking import MlflowClient

from lightsaft.model import build_model, load_weights
from lightsaft.train import resolve_precision
from lightsaft.training.lightning_module import LightSAFTModule


def _runs(uri: str, experiment: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id]) if exp else []


def test_training_learns_and_records_everything(trained):
    client, runs = _runs(trained.tracking_uri, "tests")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    # every param, flattened
    assert run.data.params["model.dk"] == "8"
    assert run.data.params["model.num_tdfs"] == "4"
    assert run.data.params["train.lr"] == "0.001"
    assert run.data.params["data.source"] == "synthetic"
    assert run.data.tags["variant"] == "lightsaft"
    assert len(run.data.tags["data_manifest_sha256"]) == 64
    # curves: train loss per step falls well below its start; val loss and lr per epoch
    steps = sorted(client.get_metric_history(run.info.run_id, "train_loss_step"), key=lambda m: m.step)
    first = sum(m.value for m in steps[:3]) / 3
    last = sum(m.value for m in steps[-3:]) / 3
    print(f"train loss {first:.4f} -> {last:.4f} over {steps[-1].step} steps")
    assert last < 0.6 * first
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 3
    assert client.get_metric_history(run.info.run_id, "lr-Adam")[0].value == pytest.approx(1e-3)
    assert run.data.metrics["param_count"] == 71_988
    # the model: an MLflow logged model holding the weights file, not a run artifact
    assert not client.list_artifacts(run.info.run_id, "model")
    (model,) = client.search_logged_models([run.info.experiment_id])
    assert model.source_run_id == run.info.run_id and model.params["model.dk"] == "8"
    assert [a.path for a in client.list_logged_model_artifacts(model.model_id)] == ["weights.pt"]
    assert run.inputs.dataset_inputs[0].dataset.name == "synthetic"
    assert run.data.tags["mlflow.note.content"].endswith("71,988 parameters · 300 steps")

    out = trained.outputs
    assert json.loads(out.run_file.read_text())["run_id"] == run.info.run_id
    assert json.loads(out.run_file.read_text())["model_id"] == model.model_id
    metrics = json.loads(out.metrics.read_text())
    assert metrics["steps"] == 300 and metrics["epochs"] == 3 and metrics["param_count"] == 71_988
    assert metrics["best_val_loss"] == pytest.approx(
        min(m.value for m in client.get_metric_history(run.info.run_id, "val_loss"))
    )
    curves = out.curves.read_text().splitlines()
    assert curves[0].startswith("epoch,step,train_loss,val_loss,lr") and len(curves) == 4
    assert not (trained.root / ".lightsaft" / "train").exists() or not any(
        (trained.root / ".lightsaft" / "train").iterdir()
    )


def test_checkpoint_and_weights_reload_to_the_same_model(trained):
    model = load_weights(trained.outputs.weights)
    module = LightSAFTModule.load_from_checkpoint(trained.outputs.checkpoint, weights_only=True).eval()
    fresh = build_model(trained.params["model"]).eval()
    torch.manual_seed(1)
    spec, cond = torch.randn(4, 4, 16, 129), torch.arange(4)
    with torch.no_grad():
        out = model(spec, cond)
        torch.testing.assert_close(module(spec, cond), out)
        assert not torch.allclose(fresh(spec, cond), out)


def test_bf16_mixed_trains_and_validates_on_cpu(tmp_path, synthetic_cache, monkeypatch):
    root = make_project(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = tiny_params(
        **{
            "trainer.precision": "bf16-mixed",
            "train.items_per_epoch": 16,
            "trainer.max_epochs": 1,
            "trainer.limit_val_batches": 2,
            "mlflow.experiment": "bf16",
        }
    )
    metrics = train_into(root, params, synthetic_cache)
    assert metrics["steps"] == 2 and metrics["precision"] == "bf16-mixed"
    assert metrics["best_val_loss"] > 0 and metrics["best_val_loss"] == metrics["best_val_loss"]  # not NaN


def test_precision_auto_is_fp32_without_gpu():
    if not torch.cuda.is_available():
        assert resolve_precision("auto", "auto") == "32-true"
    assert resolve_precision("32", "cpu") == "32-true"
    assert resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_killed_training_resumes_with_the_same_run(tmp_path, synthetic_cache, sig):
    root = make_project(tmp_path)
    (root / "data").mkdir()
    os.symlink(synthetic_cache, root / "data" / "cache")
    params = tiny_params(
        **{
            "train.items_per_epoch": 64,
            "train.valid_chunks_per_track": 1,
            "trainer.max_epochs": 4,
            "mlflow.experiment": "resume",
        }
    )
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT")}
    cmd = [sys.executable, str(REPO / "pipeline" / "train.py")]
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not list((root / ".lightsaft").glob("train/*/checkpoints/last.ckpt")):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.2)
    proc.send_signal(sig)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0, output[-2000:]
    assert not (root / "models" / "weights.pt").exists()  # nothing that looks complete
    assert list((root / ".lightsaft").glob("train/*/checkpoints/interrupted.ckpt")), output[-2000:]

    params["runtime"]["train"]["resume"] = True
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    _, runs = _runs(f"sqlite:///{root / 'mlflow.db'}", "resume")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert json.loads((root / "models" / "mlflow_run.json").read_text())["run_id"] == runs[0].info.run_id
    epochs = [int(line.split(",")[0]) for line in (root / "plots" / "train_curves.csv").read_text().splitlines()[1:]]
    assert epochs == [0, 1, 2, 3]
    assert json.loads((root / "metrics" / "train.json").read_text())["steps"] == 4 * 8


def test_each_training_takes_a_free_gpu(tmp_path):
    """Queued trainings on a multi-GPU machine spread over the GPUs (locks; no GPU needed)."""
    from lightsaft.devices import claim_devices as claim_gpu
    from lightsaft.paths import file_lock

    with (
        claim_gpu(1, ["0", "1", "2"], tmp_path) as first,
        file_lock(tmp_path / "gpu-1.lock"),  # held by some other training
        claim_gpu(1, ["0", "1", "2"], tmp_path) as second,
    ):
        assert (first, second) == ([0], [2])
    with claim_gpu(1, ["0", "1"], tmp_path) as again:  # released on exit
        assert again == [0]
    with claim_gpu(4, ["0", "1"], tmp_path) as ddp, claim_gpu(1, ["0"], tmp_path) as single:
        assert (ddp, single) == (4, 1)  # DDP / one GPU: as configured


def test_official_init_is_xavier_normal():
    params = tiny_params()
    torch.manual_seed(0)
    official = LightSAFTModule(params["model"], dict(params["train"], init="official")).model
    torch.manual_seed(0)
    default = LightSAFTModule(params["model"], dict(params["train"], init="pytorch")).model
    keys = official.net.encoders[0].saft.attention.keys  # [dk, K] = [8, 4]
    std = (2 / (keys.shape[0] + keys.shape[1])) ** 0.5
    weights = torch.cat(
        [
            p.detach().flatten() / (2 / sum(p.shape[:2]) / (p[0, 0].numel() if p.dim() > 2 else 1)) ** 0.5
            for p in official.parameters()
            if p.dim() >= 2
        ]
    )
    assert abs(weights.std().item() - 1) < 0.05  # every >=2-d parameter: N(0, xavier std)
    assert abs(keys.std().item() - std) < std
    emb_o, emb_d = official.net.embedding.weight, default.net.embedding.weight
    assert not torch.allclose(emb_o, emb_d)  # PyTorch's default is N(0, 1) there
