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
from ..paths import atomic_dir
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


RUN_ID = re.compile(r"[0-9a-f]{32}")
REGISTERED = re.compile(r"models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[^/@]+))")


def model_of(mlflow_client, ref: str) -> str:
    """The logged model meant by ``ref``: its id (``m-...``, ``models:/m-...``), a registered model
    version (``models:/<name>/<version>``, ``models:/<name>@<alias>``), a training or evaluation
    run id (also as ``runs:/<run id>``), or a run record such as ``models/mlflow_run.json``."""
    from mlflow.exceptions import MlflowException

    if Path(ref).is_file():
        record = records.read_run_file(ref)
        ref = record.get("model_id") or record["run_id"]
    if registered := REGISTERED.fullmatch(ref):
        return _registered_version(ref, **registered.groupdict())
    if ref.startswith("runs:/"):
        run_id = ref.removeprefix("runs:/").rstrip("/")
        if not RUN_ID.fullmatch(run_id):
            raise TrackingError(f"{ref}: expected runs:/<run id> (32 hexadecimal digits; the run's logged model)")
        ref = run_id
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
            f"{ref}: neither a run id, a logged model id (m-...), a registered model (models:/<name>/<version>) "
            f"nor a run record file in {redact(store.tracking_uri())}; `lightsaft ui` lists them"
        ) from None
    outputs = sorted(run.outputs.model_outputs if run.outputs else [], key=lambda o: o.step)
    if outputs:
        return outputs[-1].model_id
    if parent := run.data.tags.get("mlflow.parentRunId"):  # an evaluation run: its training's model
        return model_of(mlflow_client, parent)
    raise TrackingError(f"run {ref} logged no model (trained before models were logged?); retrain it to register it")


def is_run(mlflow_client, run_id: str) -> bool:
    """Whether ``run_id`` names a run of the store (a bare id may also be a file or experiment name)."""
    from mlflow.exceptions import MlflowException

    try:
        mlflow_client.get_run(run_id)
    except MlflowException:
        return False
    return True


def store_exists() -> bool:
    """False when the tracking store is the local database and there is none yet (nothing was
    recorded here): looking a model up must not create one."""
    uri = store.tracking_uri()
    return not uri.startswith("sqlite:///") or Path(uri[len("sqlite:///") :]).is_file()


def _registered_version(ref: str, name: str, version: str | None, alias: str | None) -> str:
    """The logged model id of ``models:/<name>/<version>`` or ``models:/<name>@<alias>``."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    registry = MlflowClient(store.tracking_uri(), registry_uri=store.tracking_uri())  # not a registry set elsewhere
    try:
        registered = registry.get_registered_model(name)
    except MlflowException:
        raise TrackingError(
            f"{ref}: no registered model {name!r} in {redact(store.tracking_uri())} "
            f"(`lightsaft register RUN_OR_MODEL --name {name}` makes one)"
        ) from None
    try:
        found = (
            registry.get_model_version(name, version) if version else registry.get_model_version_by_alias(name, alias)
        )
    except MlflowException:
        found = None
    source = (found.source or "") if found is not None else ""
    model_id = (found.model_id or source.removeprefix("models:/")) if found is not None else ""
    if model_id.startswith("m-"):
        return model_id
    if found is not None:
        raise TrackingError(f"{ref}: version {found.version} of {name!r} is not a logged model ({source}); give a run")
    aliases: dict[str, list[str]] = {}
    for each, number in (registered.aliases or {}).items():
        aliases.setdefault(str(number), []).append(f"@{each}")
    versions = sorted(registry.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
    have = ", ".join(
        f"version {v.version}" + (f" ({', '.join(aliases[str(v.version)])})" if str(v.version) in aliases else "")
        for v in versions
    )
    what = f"no version {version}" if version else f"no alias @{alias}"
    raise TrackingError(f"{ref}: registered model {name!r} has {what}; it has {have or 'no versions'}")


def registered_name(ref: str) -> str | None:
    """``models:/<name>/<version>`` -> ``<name>-v<version>``, ``models:/<name>@<alias>`` -> ``<name>-<alias>``;
    None for other references."""
    found = REGISTERED.fullmatch(ref)
    if found is None:
        return None
    return f"{found['name']}-v{found['version']}" if found["version"] else f"{found['name']}-{found['alias']}"


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


def weights_file(model_id: str, downloads: Path) -> Path:
    """The logged model's weights file: where it lies when the artifact store is a local folder (the
    default, ``mlartifacts/``), else downloaded once into ``downloads/<model id>/`` (a logged
    model's files never change once it is ready)."""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    model = store.client().get_logged_model(model_id)
    status = getattr(model.status, "name", str(model.status))
    if "READY" not in status:
        raise TrackingError(f"logged model {model_id} is {status}, not ready: its training did not finish")
    location = model.artifact_location
    if location.startswith("file:") or "://" not in location:
        local = Path(url2pathname(urlparse(location).path) if location.startswith("file:") else location) / WEIGHTS_NAME
        if local.is_file():
            return local
    folder = downloads / model_id
    if not (folder / WEIGHTS_NAME).is_file():
        with atomic_dir(folder) as tmp:
            download_weights(model_id, tmp)
    return folder / WEIGHTS_NAME


def download_weights(model_id: str, dst: str | Path) -> Path:
    """The logged model's weights file, downloaded into ``dst`` (load it with ``load_weights``)."""
    from mlflow.artifacts import download_artifacts

    model = store.client().get_logged_model(model_id)
    uri = f"{model.artifact_location.rstrip('/')}/{WEIGHTS_NAME}"
    Path(dst).mkdir(parents=True, exist_ok=True)
    return Path(download_artifacts(artifact_uri=uri, dst_path=str(dst), tracking_uri=store.tracking_uri()))
