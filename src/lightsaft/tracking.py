"""MLflow tracking: where runs land (decided here only) and what each stage records.

Default backend: ``sqlite:///<main repo>/mlflow.db`` with artifacts in ``<main repo>/mlartifacts``.
``MLFLOW_TRACKING_URI`` overrides it (a team's tracking server). ``dvc exp run --temp/--queue``
runs stages in a throw-away copy under ``<repo>/.dvc/tmp/exps/``; runs from there must still land
in the main repository's database, so the root is resolved past such copies.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

from .errors import LightSAFTError, redact
from .paths import file_lock, project_root, write_text_atomic

DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
RUN_FILE_FORMAT = 1


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / DB_NAME}"


class TrackingError(LightSAFTError, ValueError):
    """The record of a training's MLflow run is unreadable."""


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def client():
    """An MlflowClient for :func:`tracking_uri`. A new SQLite database is created under a file
    lock (two queued experiments may start at once) and switched to WAL mode, so concurrent
    writers wait for each other instead of failing with "database is locked"."""
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    db = _sqlite_path(uri)
    if db is None:
        return MlflowClient(uri)
    with file_lock(db.with_name(db.name + ".lock")):
        mlflow_client = MlflowClient(uri)
        mlflow_client.search_experiments(max_results=1)  # creates and migrates the schema once
        with sqlite3.connect(db, timeout=60) as conn:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
    return mlflow_client


def experiment_id(mlflow_client, name: str) -> str:
    """Get or create the experiment; with the local backend its artifacts go beside the database
    (otherwise MLflow puts them relative to whatever directory created the experiment first)."""
    from mlflow.exceptions import MlflowException

    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            mlflow_client.restore_experiment(found.experiment_id)
        return found.experiment_id
    db = _sqlite_path(tracking_uri())
    location = (db.parent / ARTIFACTS_DIR / name).as_uri() if db else None
    try:
        return mlflow_client.create_experiment(name, artifact_location=location)
    except MlflowException:  # created meanwhile by a concurrent experiment
        return mlflow_client.get_experiment_by_name(name).experiment_id


def git_tags(root: Path | None = None) -> dict[str, str]:
    """Commit and dirty flag of the code that runs (the experiment copy inside DVC runs)."""

    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=root or os.getcwd(), capture_output=True, text=True)
        return result.stdout.strip() if result.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    tags = {"git_commit": commit or "unknown"}
    if commit:
        tags["git_dirty"] = str(bool(git("status", "--porcelain", "--untracked-files=no")))
    if exp := os.environ.get("DVC_EXP_NAME"):
        tags["dvc_experiment"] = exp
    return tags


def log_params(mlflow_client, run_id: str, flat_params: dict[str, Any]) -> None:
    """Log params in batches (MLflow caps a batch at 100); values as text (credentials in URLs
    such as ``data.archive`` redacted), None as 'null'."""
    from mlflow.entities import Param

    items = [Param(k, "null" if v is None else redact(str(v))) for k, v in sorted(flat_params.items())]
    for start in range(0, len(items), 100):
        mlflow_client.log_batch(run_id, params=items[start : start + 100])


def log_metrics(mlflow_client, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
    for start in range(0, len(items), 500):
        mlflow_client.log_batch(run_id, metrics=items[start : start + 500])


def write_run_file(path: str | Path, run_id: str, experiment: str) -> None:
    """Record which MLflow run a trained model belongs to (read by later stages)."""
    write_text_atomic(
        path,
        json.dumps(
            {
                "format": RUN_FILE_FORMAT,
                "run_id": run_id,
                "experiment": experiment,
                "tracking_uri": redact(tracking_uri()),
            },
            indent=2,
        )
        + "\n",
    )


def read_run_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no MLflow run record; run the train stage first (dvc repro train)") from None
    except json.JSONDecodeError as e:
        raise TrackingError(f"{path}: corrupt MLflow run record ({e}); re-run the train stage") from None
    if not isinstance(info, dict) or "run_id" not in info:
        raise TrackingError(f"{path}: not an MLflow run record (no run_id); re-run the train stage")
    return info


def log_evaluation(
    run_file: str | Path, params: dict[str, Any], metrics: dict[str, float], artifacts: list[Path], per_track=None
) -> str:
    """One evaluation = a child run of the training run, carrying the training's params plus
    ``separate.*`` / ``evaluate.*`` (MLflow params are immutable, so a changed ``evaluate.engine``
    could not go on the parent). The parent gets ``test_<metric>`` copies of the latest scores,
    so the UI shows one sortable row per trained model. Returns the child run id."""
    from .config import flatten

    parent_id = read_run_file(run_file)["run_id"]
    mlflow_client = client()
    parent = mlflow_client.get_run(parent_id)
    tags = {**git_tags(), "stage": "evaluate", "mlflow.parentRunId": parent_id}
    child = mlflow_client.create_run(
        parent.info.experiment_id, run_name=f"{parent.info.run_name}/evaluate", tags=tags
    ).info.run_id
    own = flatten({"separate": params["separate"], "evaluate": params["evaluate"]})
    log_params(mlflow_client, child, {**parent.data.params, **own})
    log_metrics(mlflow_client, child, metrics)
    for path in artifacts:
        mlflow_client.log_artifact(child, str(path), "scores")
    if per_track is not None:
        mlflow_client.log_table(child, data=per_track, artifact_file="scores/per_track_sdr.json")
    mlflow_client.set_terminated(child, "FINISHED")
    log_metrics(mlflow_client, parent_id, {f"test_{k}": v for k, v in metrics.items()})
    mlflow_client.set_tag(parent_id, "latest_evaluation", child)
    return child


def log_report(run_file: str | Path, report_dir: str | Path) -> None:
    """The HTML report, as an artifact folder ``report/`` of the training run."""
    mlflow_client = client()
    mlflow_client.log_artifacts(read_run_file(run_file)["run_id"], str(report_dir), "report")
