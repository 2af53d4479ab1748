"""Every MLflow form ``--model`` (and ``train.pretrained``) takes, resolved in-process against a small
SQLite store holding one logged model, registered under a name with an alias; and the refusals
(unknown versions, a name that means two models, no store). The DVC experiment form is tested on
the pipeline's own experiments (tests/test_pipeline.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import TINY_MODEL, make_project
from mlflow.tracking import MlflowClient

from lightsaft.errors import WeightsError
from lightsaft.model.unet import build_model
from lightsaft.paths import file_sha256
from lightsaft.tracking import models, store
from lightsaft.weights.ours import save_weights
from lightsaft.weights.resolve import resolve_model

RUN_NAME = "refs-2026"  # as a DVC experiment names its run (and so its logged model)


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A project whose MLflow store holds one training run with its logged model (tiny, untrained
    weights), registered as version 1 of 'separator', alias 'champion'."""
    root = make_project(tmp_path_factory.mktemp("references"))
    torch.manual_seed(3)
    (root / "models").mkdir()
    weights = root / "models" / "weights.pt"
    save_weights(weights, build_model(TINY_MODEL), TINY_MODEL)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DVC_ROOT", str(root))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        client = store.client()
        run_id = client.create_run(store.experiment_id(client, "refs"), run_name=RUN_NAME).info.run_id
        model_id = models.log_model(client, run_id, weights, TINY_MODEL, step=10)
        client.set_terminated(run_id, "FINISHED")
        version = models.register(run_id, "separator")
        MlflowClient(store.tracking_uri()).set_registered_model_alias("separator", "champion", version.version)
    return SimpleNamespace(root=root, weights=weights, run_id=run_id, model_id=model_id)


@pytest.fixture
def in_store(logged, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(logged.root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return logged


def forms(logged) -> dict[str, str]:
    """Each form -> the name the model (and its song page folder) gets."""
    return {
        logged.run_id: RUN_NAME,
        f"runs:/{logged.run_id}": RUN_NAME,
        f"models:/{logged.model_id}": RUN_NAME,
        logged.model_id: RUN_NAME,
        "models:/separator/1": "separator-v1",
        "models:/separator@champion": "separator-champion",
    }


def test_every_mlflow_form_gives_the_logged_model(in_store, tmp_path):
    expected = torch.load(in_store.weights, weights_only=True)
    for reference, name in forms(in_store).items():
        found = resolve_model(reference, base=tmp_path)
        assert (found.reference, found.name) == (reference, name)
        assert found.weights.name == "weights.pt" and (in_store.root / "mlartifacts") in found.weights.parents
        assert found.sha256 == file_sha256(in_store.weights)  # the very file that was logged
        assert in_store.model_id in found.verified and found.model.params == TINY_MODEL
        state = found.model.state_dict()
        for key, value in expected["state_dict"].items():
            torch.testing.assert_close(state[key], value, msg=f"{reference}: {key}")


def test_train_pretrained_takes_the_same_forms(in_store):
    found = resolve_model("models:/separator@champion", base=in_store.root, what="train.pretrained")
    assert found.name == "separator-champion" and found.sha256 == file_sha256(in_store.weights)


def test_unknown_versions_aliases_runs_and_names_are_refused_listing_what_exists(in_store, tmp_path):
    cases = {
        "models:/separator/7": "registered model 'separator' has no version 7; it has version 1 (@champion)",
        "models:/separator@best": "registered model 'separator' has no alias @best; it has version 1 (@champion)",
        "models:/nobody/1": "no registered model 'nobody'",
        "models:/m-0123456789abcdef": "m-0123456789abcdef: no such logged model",
        f"runs:/{'0' * 32}": f"{'0' * 32}: neither a run id",
        "runs:/not-an-id": "expected runs:/<run id>",
    }
    for reference, message in cases.items():
        with pytest.raises(WeightsError, match="--model") as error:
            resolve_model(reference, base=tmp_path)
        assert message in str(error.value), reference
    with pytest.raises(FileNotFoundError, match="DVC experiment name"):  # a bare id of no run: not a model at all
        resolve_model("f" * 32, base=tmp_path)


def test_a_name_that_is_a_run_and_a_file_is_refused_listing_both(in_store, tmp_path):
    save_weights(tmp_path / in_store.run_id, build_model(TINY_MODEL), TINY_MODEL)
    with pytest.raises(WeightsError, match="is ambiguous: it names 2 models") as error:
        resolve_model(in_store.run_id, base=tmp_path)
    assert f"the MLflow run {in_store.run_id} (give runs:/{in_store.run_id})" in str(error.value)
    assert f"the file {tmp_path / in_store.run_id} (give ./{in_store.run_id})" in str(error.value)
    assert resolve_model(f"./{in_store.run_id}", base=tmp_path).weights == tmp_path / in_store.run_id
    assert resolve_model(f"runs:/{in_store.run_id}", base=tmp_path).name == RUN_NAME


def test_without_a_store_nothing_is_created(tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(make_project(tmp_path)))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(WeightsError, match="there is no MLflow store here"):
        resolve_model("models:/separator/1", base=tmp_path)
    with pytest.raises(FileNotFoundError):
        resolve_model("a" * 32, base=tmp_path)
    assert not (tmp_path / "mlflow.db").exists()


def test_a_weights_file_keeps_its_name(weights, tmp_path):
    found = resolve_model(Path(weights).name, base=Path(weights).parent)
    assert (found.name, found.verified) == ("weights", "a local file: not verified")
