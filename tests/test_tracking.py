"""Where MLflow runs land, also from inside DVC experiment copies; credentials never printed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from helpers import make_project

from lightsaft.errors import redact
from lightsaft.paths import in_project, portable, project_root, resolve
from lightsaft.tracking import records, store


@pytest.fixture
def repo(tmp_path, monkeypatch):
    root = tmp_path / "project"
    (root / ".dvc" / "tmp" / "exps" / "standalone" / "tmpabc123").mkdir(parents=True)
    (root / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    return root


def test_default_backend_is_sqlite_at_the_main_repo(repo, monkeypatch):
    monkeypatch.chdir(repo)
    assert store.tracking_uri() == f"sqlite:///{repo / 'mlflow.db'}"


def test_experiment_copy_resolves_to_the_main_repo(repo, monkeypatch):
    copy = repo / ".dvc" / "tmp" / "exps" / "standalone" / "tmpabc123"
    (copy / "dvc.yaml").write_text("stages: {}\n")
    (copy / ".dvc").mkdir()
    monkeypatch.chdir(copy)
    assert project_root() == repo  # from the path alone
    monkeypatch.setenv("DVC_ROOT", str(copy))  # even if DVC_ROOT named the copy
    assert project_root() == repo
    monkeypatch.setenv("DVC_ROOT", str(repo))
    assert store.tracking_uri() == f"sqlite:///{repo / 'mlflow.db'}"


def test_env_uri_wins_and_is_redacted(repo, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://alice:s3cret@mlflow.example.org")
    assert store.tracking_uri() == "https://alice:s3cret@mlflow.example.org"
    assert redact(store.tracking_uri()) == "https://***@mlflow.example.org"
    assert "s3cret" not in redact("postgresql://bob:s3cret@db:5432/mlflow")


def test_run_from_an_experiment_copy_lands_in_the_main_database(repo, monkeypatch):
    """A stage working inside the copy (as `dvc exp run --temp` runs it: DVC_ROOT names the main
    repository) logs a run; it is found in the main repository's database, artifacts beside it."""
    from mlflow.tracking import MlflowClient

    make_project(repo, mlflow_db=True)  # the main repository's database exists (empty): the copy must not get one
    copy = repo / ".dvc" / "tmp" / "exps" / "standalone" / "tmpabc123"
    (copy / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(copy)
    monkeypatch.setenv("DVC_ROOT", str(repo))
    client = store.client()
    run = client.create_run(store.experiment_id(client, "copytest"), run_name="from-copy")
    store.log_params(client, run.info.run_id, {"model.dk": 16})
    assert (repo / "mlflow.db").is_file() and not (copy / "mlflow.db").exists()

    main = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    assert main.get_run(run.info.run_id).data.params == {"model.dk": "16"}
    exp = main.get_experiment_by_name("copytest")
    assert exp.artifact_location == (repo / "mlartifacts" / "copytest").as_uri()
    assert sqlite3.connect(repo / "mlflow.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_run_file_roundtrip_and_errors(tmp_path):
    records.write_run_file(tmp_path / "run.json", "abc", "lightsaft")
    assert records.read_run_file(tmp_path / "run.json")["run_id"] == "abc"
    with pytest.raises(FileNotFoundError, match="run the train stage first"):
        records.read_run_file(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt MLflow run record"):
        records.read_run_file(tmp_path / "bad.json")


def test_user_paths_are_relative_to_the_main_repo(repo, monkeypatch):
    copy = repo / ".dvc" / "tmp" / "exps" / "standalone" / "tmpabc123"
    monkeypatch.chdir(copy)
    assert in_project("data/musdb18") == repo / "data" / "musdb18"
    assert in_project("/abs/musdb") == Path("/abs/musdb")


def test_outputs_are_recorded_relative_so_they_move_with_a_copy(repo, monkeypatch):
    monkeypatch.chdir(repo)
    raw = repo / "data" / "raw"
    inside = raw / "synthetic" / "test" / "a" / "mixture.wav"
    recorded = portable(inside, repo / "data" / "cache", movable=raw)
    assert recorded == "../raw/synthetic/test/a/mixture.wav"
    moved = repo.parent / "elsewhere" / "data" / "cache"
    assert resolve(recorded, moved) == moved / "../raw/synthetic/test/a/mixture.wav"
    # user data, even inside the repository (data/musdb18hq), stays where it is: absolute
    for user_data in (Path("/srv/musdb18/train/x.stem.mp4"), repo / "data" / "musdb18hq" / "train" / "x"):
        assert portable(user_data, raw, movable=raw) == str(user_data)
        assert resolve(str(user_data), moved) == user_data
