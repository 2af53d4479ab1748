"""Models by the names a user has in front of them: a DVC experiment, an MLflow run, logged model or
registered model. Each names one of our weights files; :func:`locate` finds it.

- ``demo-20261206-122313``: a DVC experiment (``dvc exp show``): the ``models/weights.pt`` its
  commit's ``dvc.lock`` records, from the DVC cache (md5 checked);
- ``<run id>`` or ``runs:/<run id>``: an MLflow training (or evaluation) run: its logged model;
- ``models:/m-<id>``: a logged model (the experiment's Models tab);
- ``models:/<name>/<version>``, ``models:/<name>@<alias>``: a registered model version
  (``lightsaft register``).

A bare name may mean more than one thing (a file and an experiment, a published name and an
experiment, an experiment run from two baselines): it is refused, listing what it could mean and
how to name each one. The model is named after what was typed (the experiment, the model), so
``lightsaft separate --page`` makes ``separated/demo-20261206-122313-<sha8>/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..dvc_experiments import ExperimentOutputError, cached_output, experiment_refs_by_name
from ..errors import WeightsError, redact
from ..layout import WEIGHTS
from ..paths import project_root
from .published import PUBLISHED

EXPERIMENT_REF = re.compile(r"refs/exps/[0-9a-f]{2}/[0-9a-f]{38}/[^/]+")  # an experiment of one baseline
MLFLOW_PREFIXES = ("runs:/", "models:/")
RUN_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class Located:
    """Our weights file that a named reference means."""

    weights: Path
    name: str  # what the user typed, or the model's name: the song page's folder is named after it
    verified: str  # how the file was checked


def locate(text: str, base: Path, what: str) -> Located | None:
    """The weights file ``text`` names as a DVC experiment of the project at ``base`` or a model of
    its MLflow store; None when it names neither (then it is a file or a published name).
    Ambiguous names are refused (WeightsError), listing what each could mean."""
    if text.startswith(MLFLOW_PREFIXES):
        return _mlflow(text, base, what)
    if EXPERIMENT_REF.fullmatch(text):
        return _experiment(project_root(base), text, what)
    if "/" in text or "\\" in text or not text:  # a path: never an experiment or a bare id
        return None
    repo = project_root(base)
    meanings = [(f"the DVC experiment {text} ({ref})", ref) for ref in experiment_refs_by_name(repo).get(text, [])]
    if (RUN_ID.fullmatch(text) or text.startswith("m-")) and _in_mlflow(text):
        kind, form = ("logged model", f"models:/{text}") if text.startswith("m-") else ("run", f"runs:/{text}")
        meanings.append((f"the MLflow {kind} {text}", form))
    if not meanings:
        return None
    if (base / text).is_file():
        meanings.append((f"the file {base / text}", f"./{text}"))
    if text in PUBLISHED:
        meanings.append(
            (f"the published model {text}", f"no other name: rename the experiment, dvc exp rename {text} NEW")
        )
    if len(meanings) > 1:
        listing = "; ".join(f"{meaning} (give {form})" for meaning, form in meanings)
        raise WeightsError(f"{what} = {text!r} is ambiguous: it names {len(meanings)} models: {listing}")
    form = meanings[0][1]
    return _experiment(repo, form, what) if form.startswith("refs/") else _mlflow(form, base, what)


def _experiment(repo: Path, ref: str, what: str) -> Located:
    """A DVC experiment's ``models/weights.pt``, from the DVC cache by its commit's ``dvc.lock``."""
    name = ref.rsplit("/", 1)[-1]
    if ref not in experiment_refs_by_name(repo).get(name, []):
        raise WeightsError(f"{what} = {ref!r}: no such DVC experiment in {repo} (dvc exp show lists them)")
    try:
        path, md5 = cached_output(repo, ref, WEIGHTS.as_posix())
    except ExperimentOutputError as e:
        raise WeightsError(f"{what}: {e}") from None
    return Located(path, _safe(name), f"DVC experiment {name}: md5 {md5} of its dvc.lock verified")


def _in_mlflow(text: str) -> bool:
    """Whether a bare id names a run or logged model of the store (none when there is no store)."""
    from ..tracking import models, store

    if not models.store_exists():
        return False
    client = store.client()
    if text.startswith("m-"):
        from mlflow.exceptions import MlflowException

        try:
            client.get_logged_model(text)
        except MlflowException:
            return False
        return True
    return models.is_run(client, text)


def _mlflow(text: str, base: Path, what: str) -> Located:
    """An MLflow run's, logged model's or registered model's weights file."""
    from mlflow.exceptions import MlflowException

    from ..tracking import models, store

    if not models.store_exists():
        raise WeightsError(
            f"{what} = {text!r}: there is no MLflow store here ({redact(store.tracking_uri())}); run it where "
            f"the model was trained, or set MLFLOW_TRACKING_URI"
        )
    try:
        client = store.client()
        model_id = models.model_of(client, text)
        weights = models.weights_file(model_id, project_root(base) / ".lightsaft" / "models")
        model = client.get_logged_model(model_id)
    except (models.TrackingError, MlflowException, FileNotFoundError) as e:  # a download that failed, too
        raise WeightsError(f"{what} = {text!r}: {e}") from None
    name = models.registered_name(text) or model.name or model_id
    return Located(weights, _safe(name), f"MLflow logged model {model_id} (run {model.source_run_id}): not verified")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"
