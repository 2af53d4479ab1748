"""The trained model in MLflow 3: a logged model of the training run, and the model registry.

A logged model holds our weights-only ``weights.pt`` (state dict + model params) and nothing else:
no pickled Python object, no inferred environment. It loads back with
:func:`lightsaft.model.load_weights` (:func:`download_weights`). Its params are the model params,
its metrics the training's figures and, linked by the evaluate stage, the test scores: the
experiment's Models tab compares and ranks models by them. ``lightsaft register`` adds one to the
model registry: a command, not a param, so registering never reruns a stage.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import redact
from ..schema import flatten
from . import records, store
from .store import TrackingError

WEIGHTS_NAME = "weights.pt"


def log_model(mlflow_client, run_id: str, weights: Path, model_params: dict[str, Any], step: int) -> str:
    """``weights`` as the run's logged model (named after the run, typed by the model variant),
    recorded as the run's output at ``step``; returns its id."""
    from mlflow.entities import LoggedModelOutput

    run = mlflow_client.get_run(run_id)
    model = mlflow_client.create_logged_model(
        run.info.experiment_id,
        name=re.sub(r"[/:.%\"']", "-", run.info.run_name or "model"),  # characters MLflow refuses
        source_run_id=run_id,
        params={k: "null" if v is None else str(v) for k, v in flatten({"model": model_params}).items()},
        tags={k: v for k, v in run.data.tags.items() if k.startswith(("mlflow.source.", "dvc_experiment"))},
        model_type=model_params["variant"],
    )
    try:
        mlflow_client.log_model_artifact(model.model_id, str(weights))
    except BaseException:
        mlflow_client.finalize_logged_model(model.model_id, "FAILED")
        raise
    mlflow_client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step)])
    mlflow_client.finalize_logged_model(model.model_id, "READY")
    return model.model_id


def model_of(mlflow_client, ref: str) -> str:
    """The logged model meant by ``ref``: its id (``m-...``, ``models:/m-...``), a training or
    evaluation run id, or a run record such as ``models/mlflow_run.json``."""
    from mlflow.exceptions import MlflowException

    if Path(ref).is_file():
        record = records.read_run_file(ref)
        ref = record.get("model_id") or record["run_id"]
    ref = ref.removeprefix("models:/")
    if ref.startswith("m-"):
        try:
            return mlflow_client.get_logged_model(ref).model_id
        except MlflowException:
            raise TrackingError(f"{ref}: no such logged model in {redact(store.tracking_uri())}") from None
    try:
        run = mlflow_client.get_run(ref)
    except MlflowException:
        raise TrackingError(
            f"{ref}: neither a run id, a logged model id (m-...) nor a run record file "
            f"in {redact(store.tracking_uri())}; `lightsaft ui` lists both"
        ) from None
    outputs = sorted(run.outputs.model_outputs if run.outputs else [], key=lambda o: o.step)
    if outputs:
        return outputs[-1].model_id
    if parent := run.data.tags.get("mlflow.parentRunId"):  # an evaluation run: its training's model
        return model_of(mlflow_client, parent)
    raise TrackingError(f"run {ref} logged no model (trained before models were logged?); retrain it to register it")


@contextmanager
def _global_tracking_uri() -> Iterator[None]:
    """MLflow's registry resolves ``models:/`` sources through the process-wide tracking URI,
    which Lightning's MLFlowLogger also sets (to the last training's store): point it at ours,
    then back at what the environment said before."""
    import mlflow

    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(store.tracking_uri())  # sets MLFLOW_TRACKING_URI as well
    os.environ["MLFLOW_REGISTRY_URI"] = store.tracking_uri()
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])  # None: unset, as MLflow's own helper does
        if saved["MLFLOW_REGISTRY_URI"] is None:
            os.environ.pop("MLFLOW_REGISTRY_URI", None)
        else:
            os.environ["MLFLOW_REGISTRY_URI"] = saved["MLFLOW_REGISTRY_URI"]


def register(ref: str, name: str):
    """Put the logged model of ``ref`` (see :func:`model_of`) in the registry as a new version of
    ``name`` (created if needed); returns the ``ModelVersion``."""
    import mlflow

    model_id = model_of(store.client(), ref)
    with _global_tracking_uri():
        return mlflow.register_model(f"models:/{model_id}", name)


def download_weights(model_id: str, dst: str | Path) -> Path:
    """The logged model's weights file, downloaded into ``dst`` (load it with ``load_weights``)."""
    from mlflow.artifacts import download_artifacts

    model = store.client().get_logged_model(model_id)
    uri = f"{model.artifact_location.rstrip('/')}/{WEIGHTS_NAME}"
    Path(dst).mkdir(parents=True, exist_ok=True)
    return Path(download_artifacts(artifact_uri=uri, dst_path=str(dst), tracking_uri=store.tracking_uri()))
