"""A study's own MLflow run: one per study, in the study's experiment beside its points' runs,
updated at each comparison (``lightsaft ablate``, ``--compare-only``).

It holds what the comparison wrote (tables, figures, summary.md as its description) and the
tables as MLflow tables (the UI's artifact view shows them as tables; ``client.load_table``
reads them). ``MlflowClient.log_table`` appends to a table that exists, and a comparison must
replace it, so the tables are written as ``log_table`` writes them (pandas' ``split`` JSON, the
``mlflow.loggedArtifacts`` tag) over the previous ones.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import pandas as pd

from .store import NOTE, client, experiment_id, log_metrics, source_tags

STUDY_TAG = "lightsaft_study"  # the study's name, on its run (points' runs carry dvc_experiment instead)
TABLES_DIR = "tables"
FILES_DIR = "comparison"
DESCRIPTION_CHARS = 8000  # MLflow's limit on a tag value (the description is one)


def study_run_id(mlflow_client, experiment: str, study: str) -> str:
    """The study's run in ``experiment``, created on its first comparison."""
    exp_id = experiment_id(mlflow_client, experiment)
    found = mlflow_client.search_runs([exp_id], filter_string=f"tags.{STUDY_TAG} = '{study}'", max_results=1)
    if found:
        return found[0].info.run_id
    tags = {**source_tags(), STUDY_TAG: study, "stage": "study"}
    return mlflow_client.create_run(exp_id, run_name=f"study {study}", tags=tags).info.run_id


def log_study(
    experiment: str,
    study: str,
    *,
    description: str,
    tables: dict[str, pd.DataFrame],
    files: list[Path],
    tags: dict[str, str] | None = None,
    metrics: dict[str, float] | None = None,
) -> str:
    """Record one comparison of ``study`` on its run: ``files`` under ``comparison/`` (replacing
    the previous comparison's), each of ``tables`` as ``tables/<name>.json`` (an MLflow table),
    ``description`` (markdown: the summary) as the run's description, ``tags`` and ``metrics``.
    Returns the run id."""
    mlflow_client = client()
    run_id = study_run_id(mlflow_client, experiment, study)
    for path in files:
        mlflow_client.log_artifact(run_id, str(path), FILES_DIR)
    for name, table in tables.items():
        replace_table(mlflow_client, run_id, f"{TABLES_DIR}/{name}.json", table)
    for key, value in {**source_tags(), **(tags or {}), "compared_at": time.strftime("%Y-%m-%d %H:%M:%S")}.items():
        if not key.startswith("dvc_experiment"):
            mlflow_client.set_tag(run_id, key, value)
    mlflow_client.set_tag(run_id, NOTE, fit_description(description))
    if metrics:
        log_metrics(mlflow_client, run_id, metrics)
    mlflow_client.set_terminated(run_id, "FINISHED")
    return run_id


def fit_description(text: str) -> str:
    """``text`` within MLflow's limit: cut at a line, saying where the whole of it is."""
    if len(text) <= DESCRIPTION_CHARS:
        return text
    more = f"\n\n(cut here: the whole summary is the artifact {FILES_DIR}/summary.md)"
    return text[: text.rfind("\n", 0, DESCRIPTION_CHARS - len(more))] + more


def replace_table(mlflow_client, run_id: str, artifact_file: str, table: pd.DataFrame) -> None:
    """``table`` as the MLflow table ``artifact_file`` of the run, replacing any earlier one."""
    from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS

    folder, name = artifact_file.rsplit("/", 1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        table.to_json(path, orient="split", index=False, date_format="iso")
        mlflow_client.log_artifact(run_id, str(path), folder)
    logged = json.loads(mlflow_client.get_run(run_id).data.tags.get(MLFLOW_LOGGED_ARTIFACTS, "[]"))
    entry = {"path": artifact_file, "type": "table"}
    if entry not in logged:
        mlflow_client.set_tag(run_id, MLFLOW_LOGGED_ARTIFACTS, json.dumps([*logged, entry]))
