"""``train.init_from``: fine-tuning from a published name, an official checkpoint or our weights,
with the configured recipe; the source is part of the training's identity and of its MLflow run."""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers import make_project, mlflow_runs, shared_path, tiny_params, train_into
from torch.utils.data import DataLoader

from lightsaft.data.cache import Cache
from lightsaft.data.datasets import TrainDataset, ValidDataset
from lightsaft.errors import ConfigError, WeightsError
from lightsaft.paths import file_sha256
from lightsaft.spectral import edge_trim
from lightsaft.train import TrainOutputs, fingerprint, train
from lightsaft.training.losses import LOSSES, Target
from lightsaft.weights.ours import load_weights
from lightsaft.weights.published import PUBLISHED, URL_ENV, Published
from lightsaft.weights.resolve import resolve_model

FIXTURE = ("reference", "official_ckpt", "lightsaft_tiny_2020_prefix.ckpt")  # the tiny model, official format


@pytest.fixture
def project(tmp_path, monkeypatch):
    root = make_project(tmp_path / "project")
    monkeypatch.setenv("DVC_ROOT", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return root


def validation_loss(model, cache, params) -> float:
    """The validation loss of ``model`` as the train stage defines it, computed here: the mean
    ``train.val_loss`` over every validation item, on the official windows."""
    m, t = params["model"], params["train"]
    windows = ValidDataset(
        Cache(cache), m["num_frame"], t["valid_chunks_per_track"], trim=edge_trim(m["hop_length"], m["num_frame"])
    )
    loss, total, model = LOSSES[t["val_loss"]], 0.0, model.eval()
    with torch.no_grad():
        for mixture, target, condition in DataLoader(windows, batch_size=8):
            estimate = model(model.front.stft(mixture), condition)
            total += float(loss(estimate, Target(model.front, wave=target))) * len(condition)
    return total / len(windows)


def training_loss(model, cache, params, items: int = 64) -> float:
    """``train.train_loss`` of ``model`` on fixed training items of ``cache``, as training measures
    it (train mode: BatchNorm on the batch's statistics)."""
    dataset = TrainDataset(Cache(cache), params["model"]["num_frame"], items)
    torch.manual_seed(0)
    mixture, target, condition = (torch.stack(x) for x in zip(*(dataset[i] for i in range(items))))
    with torch.no_grad():
        estimate = model.train()(mixture, condition)
    return float(LOSSES[params["train"]["train_loss"]](estimate, Target(model.front, spec=target)))


@pytest.mark.slow  # trains
def test_finetuning_the_official_fixture_starts_where_it_is_and_improves(project, synthetic_cache):
    ckpt = shared_path(*FIXTURE)
    sha256 = file_sha256(ckpt)
    params = tiny_params(
        **{
            "train.init_from": str(ckpt),
            "train.init_from_sha256": sha256,
            "train.init": "official",  # the recipe's init is replaced by the source's weights
            "train.items_per_epoch": 96,
            "trainer.max_epochs": 1,
            "mlflow.experiment": "finetune",
        }
    )
    metrics = train_into(project, params, synthetic_cache)

    fixture = resolve_model(ckpt).model
    own = validation_loss(fixture, synthetic_cache, params)
    after = training_loss(load_weights(TrainOutputs.under(project).weights), synthetic_cache, params)
    before = training_loss(fixture, synthetic_cache, params)  # (last: train mode moves its BatchNorm statistics)
    print(f"the fixture's validation loss {own:.6f}, before the first step {metrics['init_val_loss']:.6f}; "
          f"training loss on the data given {before:.4f} -> {after:.4f} in {metrics['steps']} steps")  # fmt: skip
    assert metrics["init_val_loss"] == pytest.approx(own, abs=1e-5)
    assert after < 0.8 * before  # it learns from the data it is given
    assert metrics["steps"] == 12 and metrics["init_from_sha256"] == sha256

    [run] = mlflow_runs(project, "finetune")
    assert run.data.params["train.init_from"] == str(ckpt) and run.data.params["train.init_from_sha256"] == sha256
    assert run.data.tags["init_from"] == str(ckpt) and run.data.tags["init_from_sha256"] == sha256
    assert run.data.tags["init_from_verified"] == "pinned sha256 verified"
    assert "init_from_run" not in run.data.tags  # an official checkpoint: no run of ours
    assert run.data.metrics["init_val_loss"] == pytest.approx(own, abs=1e-5)


def test_the_source_is_part_of_the_training_identity(synthetic_cache):
    cache = Cache(synthetic_cache)
    base = tiny_params()
    a = tiny_params(**{"train.init_from": "w.pt", "train.init_from_sha256": "a" * 64})
    b = tiny_params(**{"train.init_from": "w.pt", "train.init_from_sha256": "b" * 64})
    assert len({fingerprint(base, cache), fingerprint(a, cache), fingerprint(b, cache)}) == 3


def test_a_file_needs_its_sha256_and_a_wrong_one_is_refused(project, synthetic_cache):
    ckpt = shared_path(*FIXTURE)
    for key in ("init_from", "pretrained"):
        with pytest.raises(ConfigError) as error:
            train(tiny_params(**{f"train.{key}": str(ckpt)}), synthetic_cache)
        assert f"train.{key} = '{ckpt}' is a file: set train.{key}_sha256 to its sha256 ({file_sha256(ckpt)} now)" in (
            str(error.value)
        )
        with pytest.raises(WeightsError, match=f"differs from the pinned {'0' * 64}; nothing loaded"):
            train(tiny_params(**{f"train.{key}": str(ckpt), f"train.{key}_sha256": "0" * 64}), synthetic_cache)
    assert not (project / "mlflow.db").exists() and not (project / "models").exists()


def test_a_model_section_that_differs_is_refused_naming_the_key(project, synthetic_cache):
    ckpt = shared_path(*FIXTURE)
    params = tiny_params(**{"train.init_from": str(ckpt), "train.init_from_sha256": file_sha256(ckpt), "model.dk": 16})
    with pytest.raises(ConfigError, match=r"train.init_from = .*: the model section does not describe this model: "
                                          r"model.dk is 16, the model has 8\. .* -S model.dk=8"):  # fmt: skip
        train(params, synthetic_cache)
    assert not (project / "mlflow.db").exists()


def test_a_published_name_needs_no_sha256(project, synthetic_cache, monkeypatch):
    """A published name pins its own hash (the authors'): resolving it asks for none, and the
    model section is then checked against it. (The fixture stands in for the published file.)"""
    monkeypatch.setenv(URL_ENV, "http://127.0.0.1:9/assets")  # nothing listens: the copy below is used
    downloaded = project / ".lightsaft" / "pretrained" / "downloads" / "lasaft_large_2019.ckpt"
    downloaded.parent.mkdir(parents=True)
    shutil.copy(shared_path(*FIXTURE), downloaded)
    published = PUBLISHED["lasaft_large_2019"]
    monkeypatch.setitem(PUBLISHED, "lasaft_large_2019", Published(file_sha256(downloaded), "1 MB", published.model))
    with pytest.raises(ConfigError, match="train.init_from = lasaft_large_2019: .* model.dk is 16, the model has 8"):
        train(tiny_params(**{"train.init_from": "lasaft_large_2019", "model.dk": 16}), synthetic_cache)


def test_pretrained_and_init_from_together_are_refused():
    with pytest.raises(ConfigError, match="train.init_from = 'b.pt': with train.pretrained = 'a.pt'"):
        tiny_params(**{"train.pretrained": "a.pt", "train.init_from": "b.pt"})
    with pytest.raises(ConfigError, match="train.init_from_sha256 = .*: train.init_from is null"):
        tiny_params(**{"train.init_from_sha256": "a" * 64})


@pytest.mark.slow  # trains
def test_finetuning_our_weights_links_the_source_run(trained_by_sdr, synthetic_cache, monkeypatch):
    """Our weights file (models/weights.pt with models/mlflow_run.json beside it): the run of the
    fine-tuning links the source run and its logged model; a copy of the file without its record
    is found by its sha256."""
    from mlflow.tracking import MlflowClient

    from lightsaft.tracking.records import read_run_file
    from lightsaft.tracking.training_run import _run_of_weights

    root, outputs, metrics = trained_by_sdr.root, trained_by_sdr.outputs, trained_by_sdr.metrics
    monkeypatch.setenv("DVC_ROOT", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    sha256 = file_sha256(outputs.weights)
    params = tiny_params(
        **{
            "train.init_from": "models/weights.pt",  # relative to the project, as in params.yaml
            "train.init_from_sha256": sha256,
            "train.items_per_epoch": 16,
            "train.valid_chunks_per_track": 4,  # the source's validation windows
            "trainer.max_epochs": 1,
            "mlflow.experiment": "finetune-ours",
        }
    )
    tuned = train_into(root / "tuned", params, synthetic_cache)
    record = read_run_file(outputs.run_file)
    [run] = mlflow_runs(root, "finetune-ours")
    assert run.data.tags["init_from_run"] == record["run_id"] and run.data.tags["init_from_model"] == record["model_id"]
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    inputs = client.get_run(run.info.run_id).inputs.model_inputs  # (search_runs leaves them out)
    assert [i.model_id for i in inputs] == [record["model_id"]]
    assert client.get_run(record["run_id"]).data.tags["weights_sha256"] == sha256
    # starts where the source is: its validation loss at the epoch whose weights were kept
    kept = metrics["selected_epoch"]
    rows = [line.split(",") for line in outputs.curves.read_text().splitlines()]
    source_val_loss = float(rows[1 + kept][rows[0].index("val_loss")])
    assert tuned["init_val_loss"] == pytest.approx(source_val_loss, abs=1e-5)
    # a copy without its run record is found by the weights' sha256; other weights are not
    assert _run_of_weights(client, None, sha256) == (record["run_id"], record["model_id"])
    assert _run_of_weights(client, None, "0" * 64) is None
