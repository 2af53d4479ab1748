"""MLflow tracking: where runs land (decided here only) and what each stage records.

Default backend: ``sqlite:///<main repo>/mlflow.db`` with artifacts in ``<main repo>/mlartifacts``.
``MLFLOW_TRACKING_URI`` overrides it (a team's tracking server). ``dvc exp run --temp/--queue``
runs stages in a throw-away copy under ``<repo>/.dvc/tmp/exps/``; runs from there must still land
in the main repository's database, so the root is resolved past such copies.

Records follow MLflow 3's model-training conventions, so its UI shows them without setup: experiments
of kind ``custom_model_development`` (the UI opens the training runs view, not the GenAI one),
the standard source tags, the training data as a dataset input, the trained model as a logged
model (see :mod:`lightsaft.logged_model`) with the test scores linked to it, and a run description.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import LightSAFTError, redact
from ..paths import file_lock, project_root, resolve
from ..spectral import TARGETS

DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
NOTE = "mlflow.note.content"  # the run's description in the UI
DATA_CONTEXT = "mlflow.data.context"
DIGEST_CHARS = 12  # of a dataset's digest, as shown in the runs table
VARIANTS = {"lightsaft": "LightSAFT", "lasaft": "LaSAFT"}
WHOLE_TRACK = {"test_sdr_mdx_mean": "MDX 2021 SDR", "test_si_sdr_mean": "SI-SDR"}  # beside museval's, not comparable


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
    """Get or create the experiment, of kind ``custom_model_development`` (also an existing one:
    MLflow 3's UI opens other experiments in its GenAI view). With the local backend its artifacts
    go beside the database (otherwise MLflow puts them relative to whatever directory created the
    experiment first)."""
    from mlflow.exceptions import MlflowException

    key, kind = EXPERIMENT_KIND
    found = mlflow_client.get_experiment_by_name(name)
    if found is None:
        db = _sqlite_path(tracking_uri())
        location = (db.parent / ARTIFACTS_DIR / name).as_uri() if db else None
        try:
            return mlflow_client.create_experiment(name, artifact_location=location, tags={key: kind})
        except MlflowException:  # created meanwhile by a concurrent experiment
            found = mlflow_client.get_experiment_by_name(name)
    if found.lifecycle_stage == "deleted":
        mlflow_client.restore_experiment(found.experiment_id)
    if found.tags.get(key) != kind:
        mlflow_client.set_experiment_tag(found.experiment_id, key, kind)
    return found.experiment_id


def training_experiments(mlflow_client) -> list:
    """The experiments of kind ``custom_model_development`` (ours), by name."""
    key, kind = EXPERIMENT_KIND
    found = mlflow_client.search_experiments(filter_string=f"tags.`{key}` = '{kind}'")
    return sorted(found, key=lambda e: e.name)


def runs_view(base_url: str, experiment: str) -> str:
    """The UI's training runs view of an experiment. MLflow 3.17's UI shows an experiment as its
    GenAI / Model training switch says (GenAI unless the browser remembers otherwise), whatever
    the experiment's kind; this link selects Model training (and the browser remembers it)."""
    return f"{base_url}/#/experiments/{experiment}/runs?workflowType=machine_learning"


def source_tags(root: Path | None = None) -> dict[str, str]:
    """Where a run comes from: MLflow's standard tags (source name and type, git commit, branch
    and remote, user: the run page's Source and User) and ours (``git_commit``, ``git_dirty``, and
    ``dvc_experiment``, on which the study comparison finds a point's run)."""

    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=root or os.getcwd(), capture_output=True, text=True)
        return result.stdout.strip() if result.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    tags = {"git_commit": commit or "unknown", "mlflow.source.type": "LOCAL", "mlflow.source.name": _entry_point()}
    if user := _user():
        tags["mlflow.user"] = user
    if commit:
        tags["git_dirty"] = str(bool(git("status", "--porcelain", "--untracked-files=no")))
        tags["mlflow.source.git.commit"] = commit
        if (branch := git("rev-parse", "--abbrev-ref", "HEAD")) not in ("", "HEAD"):
            tags["mlflow.source.git.branch"] = branch
        if remote := git("remote", "get-url", "origin"):
            tags["mlflow.source.git.repoURL"] = redact(remote)
    if exp := os.environ.get("DVC_EXP_NAME"):
        tags["dvc_experiment"] = exp
    return tags


def _entry_point() -> str:
    """The script that runs (``pipeline/train.py``), relative to the repository it runs in."""
    script = Path(os.path.abspath(sys.argv[0] or "python"))
    return str(script.relative_to(os.getcwd())) if script.is_relative_to(os.getcwd()) else script.name


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in some containers
        return None


def dataset_of(cache) -> Any:
    """The data of a prepared cache as an MLflow dataset (the runs table's Dataset column): named
    after its source, identified by the digest of the cache manifest (track list, audio sha256s,
    STFT), located where its audio came from. ``cache``: a :class:`lightsaft.data.cache.Cache`."""
    from mlflow.entities import Dataset

    manifest = cache.manifest
    ours = [t for t in manifest["tracks"] if "extra" not in t]  # data.extra_train roots: extra_datasets_of
    files = [os.path.abspath(resolve(s["path"], cache.path)) for t in ours for s in t["sources"]]
    root = Path(os.path.commonpath(files)) if files else Path(cache.path)
    here = Path(os.getcwd())
    location = str(root.relative_to(here)) if root.is_relative_to(here) else str(root)
    splits = {split: sum(t["split"] == split for t in manifest["tracks"]) for split in ("train", "valid", "test")}
    profile = {
        "tracks": splits,
        "dataset_sha256": manifest.get("dataset_sha256"),
        "stft": f"n_fft {manifest['n_fft']}, hop {manifest['hop_length']}",
        "dtype": manifest["dtype"],
        **({"extra_train": manifest["extra_train"]} if manifest.get("extra_train") else {}),
    }
    return Dataset(
        name=manifest["source"],
        digest=cache.digest()[:DIGEST_CHARS],
        source_type="local",
        source=json.dumps({"uri": redact(location)}),
        profile=json.dumps(profile),
    )


# --- issue 23: data.extra_train ---
def extra_datasets_of(cache) -> list:
    """Each ``data.extra_train`` root of a prepared cache as an MLflow dataset of its own, beside
    :func:`dataset_of` (whose digest covers them too): named after the folder, identified by the
    digest of its tracks' audio hashes, located at the folder."""
    from mlflow.entities import Dataset

    found = []
    for index, root in enumerate(cache.manifest.get("extra_train", [])):
        tracks = [t for t in cache.manifest["tracks"] if t.get("extra") == index]
        content = json.dumps([[t["name"], [s["sha256"] for s in t["sources"]]] for t in tracks], sort_keys=True)
        found.append(
            Dataset(
                name=f"extra_train:{Path(root['root']).name}",
                digest=hashlib.sha256(content.encode()).hexdigest()[:DIGEST_CHARS],
                source_type="local",
                source=json.dumps({"uri": redact(root["root"])}),
                profile=json.dumps({"tracks": {"train": len(tracks)}, "stft": f"n_fft {cache.manifest['n_fft']}"}),
            )
        )
    return found


# --- end issue 23 ---


def log_dataset(mlflow_client, run_id: str, dataset, context: str) -> None:
    """``dataset`` (:func:`dataset_of`) as an input of the run, used for ``context``."""
    from mlflow.entities import DatasetInput, InputTag

    mlflow_client.log_inputs(run_id, datasets=[DatasetInput(dataset, [InputTag(DATA_CONTEXT, context)])])


def describe(params: dict[str, str], metrics: dict[str, float]) -> str:
    """The run's description (markdown): the model, its size and training, its test SDR per target."""
    variant = params.get("model.variant", "")
    parts = [VARIANTS.get(variant, variant or "model")]
    if "model.dk" in params:
        parts.append(f"dk {params['model.dk']}")
    if "model.num_tdfs" in params:
        parts.append(f"{params['model.num_tdfs']} TDFs")
    if "param_count" in metrics:
        parts.append(f"{int(metrics['param_count']):,} parameters")
    if "steps" in metrics:
        parts.append(f"{int(metrics['steps']):,} steps")
    lines = [" · ".join(parts)]
    sdr = [f"{t} {metrics[f'test_sdr_{t}']:.2f}" for t in (*TARGETS, "mean") if f"test_sdr_{t}" in metrics]
    if sdr:
        lines.append("Test SDR (museval, dB): " + " · ".join(sdr))
    others = [f"{label} {metrics[key]:.2f}" for key, label in WHOLE_TRACK.items() if key in metrics]
    if others:
        lines.append("Whole-track SDRs, mean over tracks and targets (dB): " + " · ".join(others))
    return "\n\n".join(lines)


def update_description(mlflow_client, run_id: str) -> None:
    """Rewrite the run's description from what the run holds now (params, then training figures,
    then test scores as the stages add them)."""
    data = mlflow_client.get_run(run_id).data
    mlflow_client.set_tag(run_id, NOTE, describe(data.params, data.metrics))


def log_params(mlflow_client, run_id: str, flat_params: dict[str, Any]) -> None:
    """Log params in batches (MLflow caps a batch at 100); values as text (credentials in URLs
    such as ``data.archive`` redacted), None as 'null'."""
    from mlflow.entities import Param

    items = [Param(k, "null" if v is None else redact(str(v))) for k, v in sorted(flat_params.items())]
    for start in range(0, len(items), 100):
        mlflow_client.log_batch(run_id, params=items[start : start + 100])


def log_metrics(
    mlflow_client, run_id: str, metrics: dict[str, float], step: int = 0, model_id: str | None = None, dataset=None
) -> None:
    """Metrics of the run; with ``model_id`` also of that logged model (its row in the Models tab),
    measured on ``dataset`` when given."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    on = {"dataset_name": dataset.name, "dataset_digest": dataset.digest} if dataset is not None else {}
    items = [Metric(k, float(v), now, step, model_id=model_id, **on) for k, v in metrics.items() if v is not None]
    for start in range(0, len(items), 500):
        mlflow_client.log_batch(run_id, metrics=items[start : start + 500])
