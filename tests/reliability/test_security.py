"""Servers bind to loopback unless asked; credentials and access tokens never reach the
terminal, the process list, MLflow params/tags or the files the stages write."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from helpers import make_project, tiny_params, train_into
from mlflow.tracking import MlflowClient

from lightsaft import cli
from lightsaft.tracking import records, store

SECRET_URI = "https://alice:s3cret@mlflow.example.org"
SECRET_DB = "postgresql://alice:s3cret@db.example.org/mlflow"


@pytest.mark.parametrize("args,host", [([], "127.0.0.1"), (["--host", "0.0.0.0", "--port", "8080"], "0.0.0.0")])
def test_ui_binds_loopback_unless_a_host_is_given(monkeypatch, capsys, args, host):
    calls = []
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd, env: calls.append((cmd, env)) or 0)
    no_experiments = SimpleNamespace(search_experiments=lambda **kwargs: [])
    monkeypatch.setattr("lightsaft.tracking.store.client", lambda: no_experiments)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", SECRET_DB)
    assert cli.main(["ui", *args]) == 0
    [(cmd, env)] = calls
    assert cmd[cmd.index("--host") + 1] == host and cmd[1:4] == ["-m", "mlflow", "ui"]
    assert "s3cret" not in " ".join(cmd)  # command lines are visible to every user (ps)
    assert env["MLFLOW_BACKEND_STORE_URI"] == SECRET_DB
    out = capsys.readouterr().out
    assert "postgresql://***@db.example.org/mlflow" in out and "s3cret" not in out


def test_ui_refuses_a_tracking_server_without_leaking_it(monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", SECRET_URI)
    assert cli.main(["ui"]) == 2
    err = capsys.readouterr().err
    assert "has its own UI" in err and "https://***@mlflow.example.org" in err and "s3cret" not in err


def test_no_secret_in_mlflow_params_tags_or_outputs(tmp_path, monkeypatch, capfd, synthetic_cache):
    """Granted archive URLs with a token in params.yaml: nothing the training records or prints
    carries them, params logged through tracking are redacted, and so is a server's URI in the
    run record."""
    from lightsaft.train import TrainOutputs

    root = make_project(tmp_path, mlflow_db=True)
    monkeypatch.setenv("DVC_ROOT", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = tiny_params(
        **{
            "data.archive": "https://zenodo.org/records/1117372/files/musdb18.zip?token=S3CRET",
            "data.sample_url": "https://bob:S3CRET@example.org/sample.zip",
            "train.items_per_epoch": 16,
            "trainer.max_epochs": 1,
            "trainer.limit_val_batches": 1,
            "mlflow.experiment": "secrets",
        }
    )
    train_into(root, params, synthetic_cache)
    run_file = TrainOutputs.under(root).run_file
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("secrets").experiment_id])
    store.log_params(client, run.info.run_id, {"data.archive": params["data"]["archive"]})
    assert client.get_run(run.info.run_id).data.params["data.archive"] == (
        "https://zenodo.org/records/1117372/files/musdb18.zip?token=***"
    )
    recorded = json.dumps([client.get_run(run.info.run_id).data.params, run.data.tags]) + run_file.read_text()
    printed = "".join(capfd.readouterr())
    assert "S3CRET" not in recorded and "S3CRET" not in printed

    monkeypatch.setenv("MLFLOW_TRACKING_URI", SECRET_URI)  # a team server: its record names it redacted
    records.write_run_file(run_file, run.info.run_id, "secrets")
    assert json.loads(run_file.read_text())["tracking_uri"] == "https://***@mlflow.example.org"
