"""What the stages record in MLflow beside the training run: the run record that ties a trained
model to its run (``models/mlflow_run.json``), the evaluation as a child run, the report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import redact
from ..paths import write_text_atomic
from .store import (
    TrackingError,
    client,
    log_dataset,
    log_metrics,
    log_params,
    source_tags,
    tracking_uri,
    update_description,
)

RUN_FILE_FORMAT = 1  # "model_id" (the logged model) is optional: older records lack it


def write_run_file(path: str | Path, run_id: str, experiment: str, model_id: str | None = None) -> None:
    """Record which MLflow run (and logged model) a trained model belongs to (read by later stages)."""
    record = {"format": RUN_FILE_FORMAT, "run_id": run_id, "experiment": experiment}
    if model_id:
        record["model_id"] = model_id
    record["tracking_uri"] = redact(tracking_uri())
    write_text_atomic(path, json.dumps(record, indent=2) + "\n")


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
    run_file: str | Path,
    params: dict[str, Any],
    metrics: dict[str, float],
    artifacts: list[Path],
    per_track=None,
    dataset=None,
) -> str:
    """One evaluation = a child run of the training run, carrying the training's params plus
    ``separate.*`` / ``evaluate.*`` (MLflow params are immutable, so a changed ``evaluate.engine``
    could not go on the parent). Its scores (``sdr_<target>``: museval's; ``sdr_mdx_<target>``,
    ``si_sdr_<target>``: the whole-track variants) are linked to the training's logged model (the
    Models tab ranks models by them), measured on ``dataset`` (:func:`dataset_of`, logged as the
    child's input); ``per_track`` (a table per track and target) is logged as an MLflow table.
    The parent gets ``test_<metric>`` copies of the latest scores, so the runs table shows one
    sortable row per trained model, and its description the SDRs. Returns the child run id."""
    from ..schema import flatten

    record = read_run_file(run_file)
    parent_id = record["run_id"]
    mlflow_client = client()
    parent = mlflow_client.get_run(parent_id)
    tags = {**source_tags(), "stage": "evaluate", "mlflow.parentRunId": parent_id}
    child = mlflow_client.create_run(
        parent.info.experiment_id, run_name=f"{parent.info.run_name}/evaluate", tags=tags
    ).info.run_id
    own = flatten({"separate": params["separate"], "evaluate": params["evaluate"]})
    log_params(mlflow_client, child, {**parent.data.params, **own})
    if dataset is not None:
        log_dataset(mlflow_client, child, dataset, "test")
    log_metrics(mlflow_client, child, metrics, model_id=record.get("model_id"), dataset=dataset)
    for path in artifacts:
        mlflow_client.log_artifact(child, str(path), "scores")
    if per_track is not None:
        mlflow_client.log_table(child, data=per_track, artifact_file="scores/per_track_sdr.json")
    mlflow_client.set_terminated(child, "FINISHED")
    log_metrics(mlflow_client, parent_id, {f"test_{k}": v for k, v in metrics.items()})
    mlflow_client.set_tag(parent_id, "latest_evaluation", child)
    update_description(mlflow_client, parent_id)
    return child


def log_report(run_file: str | Path, report_dir: str | Path) -> None:
    """The HTML report, as an artifact folder ``report/`` of the training run."""
    mlflow_client = client()
    mlflow_client.log_artifacts(read_run_file(run_file)["run_id"], str(report_dir), "report")
