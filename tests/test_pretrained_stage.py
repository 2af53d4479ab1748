"""``train.pretrained``: the train stage imports a given model instead of training one, and
writes every output a training writes, so separate/evaluate/report run on it unchanged."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from helpers import make_project, run_stage_in_process, shared_path, tiny_params, train_into
from mlflow.tracking import MlflowClient

from lightsaft.data.cache import Cache
from lightsaft.errors import ConfigError
from lightsaft.paths import file_sha256
from lightsaft.study.studies import load_study
from lightsaft.train import TrainOutputs, train
from lightsaft.training.lightning_module import LightSAFTModule
from lightsaft.weights.ours import load_weights
from lightsaft.weights.published import published_model


def fixture(name: str):
    return shared_path("reference", "official_ckpt", name)


@pytest.fixture
def project(tmp_path, monkeypatch):
    root = make_project(tmp_path, mlflow_db=True)
    monkeypatch.setenv("DVC_ROOT", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return root


def test_pretrained_official_checkpoint_replaces_training(project, synthetic_cache):
    ckpt = fixture("lightsaft_tiny_2020_prefix.ckpt")
    params = tiny_params(
        **{
            "train.pretrained": str(ckpt),
            "train.pretrained_sha256": file_sha256(ckpt),
            "mlflow.experiment": "pretrained",
        }
    )
    metrics = train_into(project, params, synthetic_cache)
    out = TrainOutputs.under(project)

    golden = torch.load(shared_path("reference", "lightsaft_tiny", "golden.pt"), weights_only=True)
    with torch.no_grad():
        estimate = load_weights(out.weights).eval()(golden["input_spec"], golden["condition"])
    torch.testing.assert_close(estimate, golden["output_eval"], atol=1e-5, rtol=1e-5)
    module = LightSAFTModule.load_from_checkpoint(out.checkpoint, weights_only=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(module(golden["input_spec"], golden["condition"]), estimate)

    sha256 = file_sha256(ckpt)
    assert metrics["pretrained"] == str(ckpt) and metrics["pretrained_sha256"] == sha256 and metrics["steps"] == 0
    assert json.loads(out.metrics.read_text()) == metrics
    assert out.curves.read_text().splitlines() == ["epoch,step,train_loss,val_loss,lr,epoch_time_s,gpu_mem_gb"]
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("pretrained").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_id == json.loads(out.run_file.read_text())["run_id"]
    assert run.data.params["train.pretrained"] == str(ckpt) and run.data.params["model.dk"] == "8"
    assert run.data.params["data.source"] == "synthetic"
    assert run.data.tags["pretrained"] == str(ckpt) and run.data.tags["pretrained_sha256"] == sha256
    assert run.data.metrics["param_count"] == 71_988


def test_a_model_section_that_differs_is_refused_with_every_difference(tmp_path, monkeypatch, synthetic_cache):
    project = make_project(tmp_path)  # without a database: the refusal creates none
    monkeypatch.setenv("DVC_ROOT", str(project))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ckpt = fixture("lightsaft_tiny_2020_prefix.ckpt")
    params = tiny_params(
        **{
            "train.pretrained": str(ckpt),
            "train.pretrained_sha256": file_sha256(ckpt),
            "model.dk": 16,
            "model.num_tdfs": 2,
        }
    )
    with pytest.raises(ConfigError) as error:
        train(params, synthetic_cache)
    message = str(error.value)
    assert "model.dk is 16, the model has 8" in message and "model.num_tdfs is 2, the model has 4" in message
    assert "dvc exp run -S model.num_tdfs=4 -S model.dk=8" in message  # in the schema's order
    assert not (project / "models").exists() and not (project / "mlflow.db").exists()


def test_a_pretrained_file_that_does_not_exist_is_named(project, synthetic_cache):
    with pytest.raises(FileNotFoundError, match="train.pretrained = 'nowhere.ckpt': no such file"):
        train(tiny_params(**{"train.pretrained": "nowhere.ckpt"}), synthetic_cache)


def test_the_official_checkpoints_study_matches_the_published_configs():
    """Each point's model section is its checkpoint's config, so the train stage accepts it."""
    from helpers import REPO

    from lightsaft.config import defaults
    from lightsaft.schema import set_dotted

    study = load_study(REPO / "experiments" / "official_checkpoints.yaml")
    assert len(study.points()) == 5
    for point in study.points():
        params = defaults()
        for key, value in point.overrides.items():
            set_dotted(params, key, value)
        assert params["model"] == published_model(params["train"]["pretrained"]), point.name
        mdx_kit = params["train"]["pretrained"] == "lightsaft_small_2020"  # crossfade at overlap 0 is the kit's
        assert params["separate"]["protocol"] == ("crossfade" if mdx_kit else "official")


def test_the_prepare_stage_computes_only_the_test_tracks_and_that_suffices(project, small_dataset, tmp_path):
    """The prepare stage of a pretrained model writes the test tracks only (no training
    spectrograms), and the train stage needs no more."""
    ckpt = fixture("lightsaft_tiny_2020_prefix.ckpt")
    params = tiny_params(**{"train.pretrained": str(ckpt), "train.pretrained_sha256": file_sha256(ckpt)})
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    (project / "data").mkdir()
    (project / "data" / "raw").symlink_to(small_dataset.parent)
    run_stage_in_process(project, "prepare")
    cache = project / "data" / "cache"
    assert Cache(cache).manifest["splits"] == ["test"] and Cache(cache).tracks("test")
    assert not (cache / "spec").exists()
    assert train_into(project, params, cache)["steps"] == 0
