"""Training: the loss falls, outputs and MLflow records exist, bf16 works on CPU, the checkpoint a resume
takes (trainings stopped and resumed: tests/reliability/test_interrupted_training.py)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import make_project, tiny_params, train_into
from mlflow.tracking import MlflowClient

from lightsaft.model.unet import build_model
from lightsaft.tracking.training_run import TrainingRun
from lightsaft.train import INTERRUPTED, _latest_checkpoint, resolve_precision
from lightsaft.training.lightning_module import LightSAFTModule
from lightsaft.weights.ours import load_weights


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
    root = make_project(tmp_path, mlflow_db=True)
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


@pytest.mark.parametrize(
    "precision,accelerator,cuda,bf16,expected",
    [
        ("auto", "auto", True, True, "bf16-mixed"),  # a GPU with bf16
        ("auto", "gpu", True, False, "32-true"),  # a GPU without (e.g. V100): no fp16 guesswork
        ("auto", "cuda", False, False, "32-true"),  # no GPU at all
        ("auto", "cpu", True, True, "32-true"),  # on the CPU even where a GPU is present
        ("32", "auto", True, True, "32-true"),  # Lightning's name for params.yaml's "32"
    ],
)
def test_precision_auto_picks_bf16_only_on_a_gpu_that_has_it(monkeypatch, precision, accelerator, cuda, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    assert resolve_precision(precision, accelerator) == expected


def test_resume_takes_the_checkpoint_furthest_along(tmp_path):
    """The interrupt checkpoint when it holds batches of an unfinished epoch; at the same step an
    end-of-epoch one, chosen whatever the directory order (a resume after a stop between two
    epochs once lost an epoch in CI: 24 steps of 32); a torn file does not count."""
    for name in ("best-epoch=0-val_loss=0.1.ckpt", "last.ckpt", INTERRUPTED):
        torch.save({"global_step": 8}, tmp_path / name)
    assert _latest_checkpoint(tmp_path).name != INTERRUPTED
    torch.save({"global_step": 9}, tmp_path / INTERRUPTED)
    assert _latest_checkpoint(tmp_path).name == INTERRUPTED
    torch.save({"global_step": 16, "state_dict": {"w": torch.zeros(1000)}}, tmp_path / "last.ckpt")
    data = (tmp_path / "last.ckpt").read_bytes()
    (tmp_path / "last.ckpt").write_bytes(data[: len(data) // 2])  # torn by a SIGKILL: the others count
    assert _latest_checkpoint(tmp_path).name == INTERRUPTED


def test_official_init_is_xavier_normal_on_matrices_and_pytorch_default_elsewhere():
    """Every parameter of two or more dimensions is drawn from N(0, 2 / (fan_in + fan_out)), the
    exact Xavier-normal std of its shape, within what its sample size allows; everything else
    (biases, norms, buffers) is left exactly as PyTorch initialises it."""
    params = tiny_params()
    torch.manual_seed(0)
    official = LightSAFTModule(params["model"], dict(params["train"], init="official")).model
    torch.manual_seed(0)
    default = LightSAFTModule(params["model"], dict(params["train"], init="pytorch")).model
    defaults = dict(default.named_parameters())
    standardised = []
    for name, p in official.named_parameters():
        p = p.detach()
        if p.dim() < 2:
            assert torch.equal(p, defaults[name]), name
            continue
        assert not torch.allclose(p, defaults[name]), name
        receptive = p[0, 0].numel()  # kernel size of a conv, 1 for a matrix
        std = (2 / ((p.shape[0] + p.shape[1]) * receptive)) ** 0.5
        n = p.numel()
        # the sample std of n normal draws lies within 4 of its standard errors (std / sqrt(2n))
        assert abs(p.std().item() / std - 1) < 4 / (2 * n) ** 0.5, (name, p.std().item(), std)
        assert abs(p.mean().item()) < 4 * std / n**0.5, name
        standardised.append(p.flatten() / std)
    z = torch.cat(standardised).double()
    assert len(z) > 70_000  # pooled over every matrix: tight bounds, and normal rather than uniform
    assert abs(z.std().item() - 1) < 4 / (2 * len(z)) ** 0.5
    assert abs(((z - z.mean()) ** 4).mean().item() / z.var().item() ** 2 - 3) < 4 * (24 / len(z)) ** 0.5
    for a, b in zip(official.buffers(), default.buffers()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("experiment", [None, "demo-20261203-120000"])
def test_a_training_run_is_named_after_its_dvc_experiment(tmp_path, monkeypatch, experiment):
    """Inside `dvc exp run` the run takes the experiment's name, else the name the stage gives it."""
    monkeypatch.setenv("DVC_ROOT", str(make_project(tmp_path, mlflow_db=True)))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    if experiment:
        monkeypatch.setenv("DVC_EXP_NAME", experiment)
    else:
        monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    tags = {"variant": "lightsaft"}
    run = TrainingRun.open(tmp_path / "run", False, "names", "lightsaft-dk8-tdfs4", {"train.lr": 0.001}, tags)
    recorded = run.client.get_run(run.run_id)
    assert recorded.info.run_name == (experiment or "lightsaft-dk8-tdfs4")
    assert recorded.data.tags["variant"] == "lightsaft" and recorded.data.params == {"train.lr": "0.001"}
    assert json.loads((tmp_path / "run" / "run.json").read_text())["run_id"] == run.run_id
