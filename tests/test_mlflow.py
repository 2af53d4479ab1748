"""MLflow 3's model-training conventions: what the stages record (through the same tracking
functions, without training), the model registry, runs restored from DVC's run cache, and
`lightsaft ui` in a real headless Chromium plus MLflow's REST API."""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from browser import chromium, wait_for
from helpers import REPO, TINY_MODEL, api, free_port, lightsaft_ui, make_project, tiny_params, ui_links
from mlflow.entities import LoggedModelStatus
from mlflow.tracking import MlflowClient

from lightsaft.cli import main
from lightsaft.model.unet import build_model
from lightsaft.paths import file_sha256
from lightsaft.schema import flatten
from lightsaft.spectral import TARGETS
from lightsaft.study.compare import ensure_mlflow_runs
from lightsaft.tracking import models, records, store
from lightsaft.tracking.models import download_weights
from lightsaft.tracking.training_run import TrainingRun
from lightsaft.weights.ours import load_weights, save_weights
from lightsaft.weights.resolve import resolve_model

EXPERIMENT = "ui-test"
RUNS = {"ui-a": 3.0, "ui-b": 6.0}  # name -> vocals SDR of its evaluation


def record_training(root: Path, cache, name: str, vocals_sdr: float) -> SimpleNamespace:
    """What the train stage (TrainingRun, as train/write_outputs drive it) and the evaluate stage
    (records.log_evaluation) record for one model, with a tiny untrained model for weights."""
    params = tiny_params(**{"mlflow.experiment": EXPERIMENT})
    folder = root / name
    os.environ["DVC_EXP_NAME"] = name  # as `dvc exp run` sets it: run name and dvc_experiment tag
    try:
        run = TrainingRun.open(
            folder,
            False,
            EXPERIMENT,
            name,
            flatten({s: params[s] for s in ("model", "train", "trainer", "mlflow")}),
            {"variant": "lightsaft", "stage": "train"},
            store.dataset_of(cache),
        )
        time.sleep(0.6)  # a few system metrics samples (sampling interval 0.1 s)
        torch.manual_seed(len(name))
        weights = folder / "weights.pt"
        save_weights(weights, build_model(TINY_MODEL), TINY_MODEL)
        figures = {"steps": 300, "epochs": 3, "param_count": 71_988, "best_val_loss": 0.04, "precision": "32-true"}
        model_id = run.finish(figures, weights, TINY_MODEL, step=300)
        run_file = folder / "mlflow_run.json"
        records.write_run_file(run_file, run.run_id, EXPERIMENT, model_id)
        sdr = {f"sdr_{t}": vocals_sdr + i for i, t in enumerate(TARGETS)}
        sdr["sdr_mean"] = sum(sdr.values()) / 4
        sdr.update(sdr_mdx_mean=vocals_sdr + 1.25, si_sdr_mean=vocals_sdr - 0.5)  # the whole-track SDRs
        child = records.log_evaluation(run_file, params, sdr, [], dataset=store.dataset_of(cache))
    finally:
        del os.environ["DVC_EXP_NAME"]
    return SimpleNamespace(
        run_id=run.run_id, model_id=model_id, child=child, weights=weights, sdr=sdr, run_file=run_file
    )


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, small_cache):
    root = make_project(tmp_path_factory.mktemp("mlflow"), mlflow_db=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DVC_ROOT", str(root))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.1")
        runs = {name: record_training(root, small_cache, name, sdr) for name, sdr in RUNS.items()}
    return SimpleNamespace(root=root, runs=runs, cache=small_cache, uri=f"sqlite:///{root / 'mlflow.db'}")


@pytest.fixture
def in_project(recorded, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(recorded.root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return MlflowClient(recorded.uri)


def test_runs_carry_kind_source_dataset_description_and_system_metrics(recorded, in_project):
    client = in_project
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    for name, rec in recorded.runs.items():
        run = client.get_run(rec.run_id)
        tags = run.data.tags
        assert run.info.run_name == name and run.info.status == "FINISHED"
        assert tags["dvc_experiment"] == name and tags["mlflow.source.type"] == "LOCAL"
        assert tags["mlflow.source.name"] and tags["mlflow.source.git.commit"] == tags["git_commit"]
        assert len(tags["git_commit"]) == 40
        (data,) = run.inputs.dataset_inputs
        assert [(t.key, t.value) for t in data.tags] == [("mlflow.data.context", "training")]
        assert data.dataset.name == "synthetic" and data.dataset.digest == recorded.cache.digest()[:12]
        source = json.loads(data.dataset.source)["uri"]
        assert Path(source).resolve() == (recorded.cache.path.parent / "raw" / "synthetic").resolve()
        assert json.loads(data.dataset.profile)["tracks"] == {"train": 3, "valid": 1, "test": 1}
        sdr = " · ".join(f"{t} {rec.sdr[f'sdr_{t}']:.2f}" for t in (*TARGETS, "mean"))
        assert tags["mlflow.note.content"] == (
            f"LightSAFT · dk 8 · 4 TDFs · 71,988 parameters · 300 steps\n\nTest SDR (museval, dB): {sdr}\n\n"
            "Whole-track SDRs, mean over tracks and targets (dB): "
            f"MDX 2021 SDR {rec.sdr['sdr_mdx_mean']:.2f} · SI-SDR {rec.sdr['si_sdr_mean']:.2f}"
        )
        assert run.data.metrics["test_sdr_mdx_mean"] == rec.sdr["sdr_mdx_mean"]  # beside museval's, on the run
        system = {k for k in run.data.metrics if k.startswith("system/")}
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= system
        child = client.get_run(rec.child)
        assert child.data.tags["mlflow.parentRunId"] == rec.run_id and child.data.tags["mlflow.source.git.commit"]
        assert [t.value for t in child.inputs.dataset_inputs[0].tags] == ["test"]


def test_existing_experiments_get_the_kind(recorded, in_project):
    plain = in_project.create_experiment("made-elsewhere")
    assert "mlflow.experimentKind" not in in_project.get_experiment(plain).tags
    assert store.experiment_id(store.client(), "made-elsewhere") == plain
    assert in_project.get_experiment(plain).tags["mlflow.experimentKind"] == "custom_model_development"


def test_logged_model_holds_the_weights_and_its_test_scores(recorded, in_project, tmp_path):
    client = in_project
    for rec in recorded.runs.values():
        model = client.get_logged_model(rec.model_id)
        assert model.status == LoggedModelStatus.READY and model.source_run_id == rec.run_id
        assert model.model_type == "lightsaft" and model.params["model.dk"] == "8"
        assert [a.path for a in client.list_logged_model_artifacts(rec.model_id)] == ["weights.pt"]  # no pickles
        assert [o.model_id for o in client.get_run(rec.run_id).outputs.model_outputs] == [rec.model_id]
        assert json.loads(rec.run_file.read_text())["model_id"] == rec.model_id
        loaded = load_weights(download_weights(rec.model_id, tmp_path / rec.model_id))
        expected = load_weights(rec.weights)
        assert loaded.params == TINY_MODEL
        for (key, a), (_, b) in zip(loaded.state_dict().items(), expected.state_dict().items()):
            torch.testing.assert_close(a, b, msg=key)
        linked = {m.key: m for m in model.metrics}
        for key, value in rec.sdr.items():  # the evaluation's scores, on the test data
            assert linked[key].value == pytest.approx(value) and linked[key].run_id == rec.child
            assert linked[key].dataset_name == "synthetic"
        assert linked["param_count"].value == 71_988 and linked["param_count"].run_id == rec.run_id
    ranked = client.search_logged_models(
        [model.experiment_id], order_by=[{"field_name": "metrics.sdr_mean", "ascending": False}]
    )
    assert [m.name for m in ranked] == sorted(RUNS, key=RUNS.get, reverse=True)


def test_register_puts_a_run_or_a_model_in_the_registry(recorded, in_project, capsys, tmp_path, monkeypatch):
    a, b = recorded.runs["ui-a"], recorded.runs["ui-b"]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'elsewhere.db'}")  # as an in-process training leaves it
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # (Lightning's MLFlowLogger sets the process-wide URI)
    assert main(["register", a.run_id, "--name", "separator"]) == 0
    assert main(["register", b.model_id, "--name", "separator"]) == 0
    assert main(["register", str(a.run_file), "--name", "separator"]) == 0
    assert main(["register", a.child, "--name", "other"]) == 0  # an evaluation run: its training's model
    assert "version 1 of 'separator'" in capsys.readouterr().out
    versions = sorted(in_project.search_model_versions("name = 'separator'"), key=lambda v: int(v.version))
    assert [(int(v.version), v.run_id) for v in versions] == [(1, a.run_id), (2, b.run_id), (3, a.run_id)]
    assert [v.source for v in versions] == [f"models:/{m}" for m in (a.model_id, b.model_id, a.model_id)]
    tag = json.loads(in_project.get_logged_model(a.model_id).tags["mlflow.modelVersions"])
    assert [(t["name"], int(t["version"])) for t in tag] == [("separator", 1), ("separator", 3), ("other", 1)]
    assert "MLFLOW_TRACKING_URI" not in os.environ  # set for MLflow's registry only while registering
    assert main(["register", "nonexistent", "--name", "separator"]) == 2
    assert "nonexistent: neither a run id, a logged model id (m-...), a registered model" in capsys.readouterr().err


def test_the_command_register_prints_separates_with_the_registered_model(recorded, in_project, capsys, tmp_path):
    """`lightsaft register` prints how to use the new version: that command runs (SONG... replaced by
    a song) and makes the page of that model, named after it."""
    rec = recorded.runs["ui-b"]
    assert main(["register", rec.model_id, "--name", "printed"]) == 0
    [line] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("songs: ")]
    command = shlex.split(line.removeprefix("songs: "))
    assert command[:3] == ["lightsaft", "separate", "SONG..."], line
    song = tmp_path / "song.wav"
    sf.write(song, np.random.default_rng(0).normal(0, 0.1, (22050, 2)).astype(np.float32), 22050)
    cwd = os.getcwd()
    os.chdir(tmp_path)  # --out separated: relative to where the user types it
    try:
        assert main([command[1], str(song), *command[3:]]) == 0
    finally:
        os.chdir(cwd)
    page = Path(re.search(r"page: (\S+)", capsys.readouterr().out).group(1))
    assert (tmp_path / page).is_file() and page.parent.name == f"printed-v1-{file_sha256(rec.weights)[:8]}"
    assert sorted(p.name for p in (tmp_path / page.parent / "song").iterdir()) == sorted(f"{t}.wav" for t in TARGETS)


def test_runs_restored_from_the_run_cache_carry_the_records(recorded, in_project):
    source = recorded.runs["ui-a"]
    table = pd.DataFrame([{"experiment": "restored-a", "status": "done", "mlflow_run_id": source.run_id}])
    ensure_mlflow_runs(recorded.root, table, "study")
    (run,) = in_project.search_runs(
        [in_project.get_experiment_by_name("study").experiment_id], "tags.dvc_experiment = 'restored-a'"
    )
    original = in_project.get_run(source.run_id)
    for key in ("mlflow.source.name", "mlflow.source.type", "mlflow.source.git.commit", "mlflow.note.content"):
        assert run.data.tags[key] == original.data.tags[key]
    assert run.data.tags["restored_from_run_cache"] == source.run_id and run.info.run_name == "restored-a"
    assert run.inputs.dataset_inputs[0].dataset.digest == original.inputs.dataset_inputs[0].dataset.digest
    assert [o.model_id for o in run.outputs.model_outputs] == [source.model_id]
    assert run.data.metrics["test_sdr_vocals"] == original.data.metrics["test_sdr_vocals"]


# ---------------------------------------------------------------------------------------
# The UI
@pytest.fixture(scope="module")
def ui(recorded, tmp_path_factory):
    """``lightsaft ui`` on a free loopback port; yields its base URL and the lines it printed before serving."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(DVC_ROOT=str(recorded.root), PYTHONPATH=str(REPO / "src"))
    cmd = [sys.executable, "-m", "lightsaft.cli", "ui", "--port", str(port)]
    with lightsaft_ui(cmd, recorded.root, env, tmp_path_factory.mktemp("ui") / "ui.log", port) as served:
        yield served


@pytest.mark.slow
def test_rest_api_shows_kind_datasets_models_and_linked_scores(recorded, ui):
    experiment = api(ui.base, f"experiments/get-by-name?experiment_name={EXPERIMENT}")["experiment"]
    assert {"key": "mlflow.experimentKind", "value": "custom_model_development"} in experiment["tags"]
    runs = api(
        ui.base,
        "runs/search",
        {"experiment_ids": [experiment["experiment_id"]], "filter": "tags.stage = 'train'"},
    )["runs"]
    assert sorted(r["info"]["run_name"] for r in runs) == sorted(RUNS)
    for run in runs:
        (data,) = run["inputs"]["dataset_inputs"]
        assert data["dataset"]["name"] == "synthetic" and data["dataset"]["digest"] == recorded.cache.digest()[:12]
        assert data["tags"] == [{"key": "mlflow.data.context", "value": "training"}]
        assert run["outputs"]["model_outputs"][0]["model_id"] == recorded.runs[run["info"]["run_name"]].model_id
    models = api(
        ui.base,
        "logged-models/search",
        {
            "experiment_ids": [experiment["experiment_id"]],
            "order_by": [{"field_name": "metrics.sdr_mean", "ascending": False}],
        },
    )["models"]
    assert [m["info"]["name"] for m in models] == ["ui-b", "ui-a"]  # ranked by test SDR
    for model in models:
        rec = recorded.runs[model["info"]["name"]]
        assert model["info"]["status"] == "LOGGED_MODEL_READY" and model["info"]["source_run_id"] == rec.run_id
        linked = {m["key"]: m for m in model["data"]["metrics"]}
        assert linked["sdr_vocals"]["value"] == pytest.approx(rec.sdr["sdr_vocals"])
        assert linked["sdr_vocals"]["model_id"] == rec.model_id and linked["sdr_vocals"]["run_id"] == rec.child


@pytest.mark.slow
def test_every_link_lightsaft_ui_prints_opens_its_experiment(recorded, ui):
    links = ui_links(ui.printed)
    ours = [line for line in ui.printed if line.startswith("MLflow UI for ") or "training runs of" in line]
    assert EXPERIMENT in links and set(re.findall(r"https?://\S+", "\n".join(ours))) == {ui.base, *links.values()}
    with urllib.request.urlopen(ui.base, timeout=30) as response:
        assert response.status == 200 and b"<html" in response.read(4096).lower()
    for name, link in links.items():
        experiment_id = re.fullmatch(rf"{re.escape(ui.base)}/#/experiments/(\d+)/runs\?\S+", link).group(1)
        assert api(ui.base, f"experiments/get?experiment_id={experiment_id}")["experiment"]["name"] == name


@pytest.mark.slow
def test_chromium_opens_the_training_runs_view_and_the_models_tab(recorded, ui, tmp_path):
    links = [line.split(": ", 1)[1] for line in ui.printed if f"training runs of '{EXPERIMENT}'" in line]
    assert len(links) == 1, ui.printed
    driver = chromium(tmp_path / "profile")
    try:
        driver.set_window_size(2000, 1000)  # room for the dataset and metric columns
        driver.get(links[0])
        listed = wait_for(driver, "return ['ui-a', 'ui-b'].every(n => document.body.innerText.includes(n))", 90)
        assert listed, driver.execute_script("return document.body.innerText")[:2000]
        assert "/runs" in driver.current_url and "workflowType=machine_learning" in driver.current_url
        rows = driver.execute_script("return [...document.querySelectorAll('[role=row]')].map(r => r.innerText)")
        digest = recorded.cache.digest()[:12]
        assert sum(f"synthetic ({digest})" in row for row in rows) == 2, rows  # the Dataset column, both runs
        text = driver.execute_script("return document.body.innerText")
        assert "Run Name" in text and "Token Usage" not in text  # the runs table, not the GenAI overview

        driver.get(links[0].replace("/runs?", "/models?"))
        shown = wait_for(driver, "return document.body.innerText.includes('sdr_vocals')", 60)
        assert shown, driver.execute_script("return document.body.innerText")[:2000]
        rows = driver.execute_script("return [...document.querySelectorAll('[role=row]')].map(r => r.innerText)")
        assert any("ui-a" in r for r in rows) and any("ui-b" in r for r in rows), rows
        if keep := os.environ.get("LIGHTSAFT_MLFLOW_SCREENSHOT"):
            driver.save_screenshot(keep)
    finally:
        driver.quit()


@pytest.mark.slow
def test_a_model_on_a_tracking_server_is_downloaded_once(ui, tmp_path, monkeypatch):
    """With MLFLOW_TRACKING_URI at a server (this UI: artifacts behind mlflow-artifacts:/), `--model`
    downloads the logged model's weights into .lightsaft/models/<model id>/, once."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", ui.base)
    client = store.client()
    run_id = client.create_run(store.experiment_id(client, "served"), run_name="served-a").info.run_id
    (tmp_path / "trained").mkdir()
    torch.manual_seed(7)
    save_weights(tmp_path / "trained" / "weights.pt", build_model(TINY_MODEL), TINY_MODEL)
    model_id = models.log_model(client, run_id, tmp_path / "trained" / "weights.pt", TINY_MODEL, step=1)
    assert not client.get_logged_model(model_id).artifact_location.startswith("file:")
    project = make_project(tmp_path / "project")
    found = resolve_model(f"runs:/{run_id}", base=project)
    assert found.weights == project / ".lightsaft" / "models" / model_id / "weights.pt" and found.name == "served-a"
    assert found.sha256 == file_sha256(tmp_path / "trained" / "weights.pt")
    stamp = found.weights.stat().st_mtime_ns
    assert resolve_model(f"models:/{model_id}", base=project).weights.stat().st_mtime_ns == stamp  # not again
