"""The MLflow run of one training: opened before ``fit`` (or reopened on resume), closed by the stage.

Its record (``run.json`` in the training's checkpoint folder) lets a resumed training continue the
same run. A training that ends any other way than by finishing is marked KILLED (interrupted)
or FAILED (an error); one killed outright (SIGKILL) is marked KILLED by the next start of the
same training. While it is open, MLflow's system metrics monitor records CPU, memory, disk and
network use (and GPU use where ``nvidia-ml-py`` is installed) as ``system/*`` metrics: the run
page's System metrics tab. Only global rank zero opens the run, so only it samples.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import Terminated
from ..layout import RUN_FILE
from ..paths import file_sha256
from ..schema import flatten
from . import records, store
from .models import log_model

RECORD = "run.json"
WEIGHTS_TAG = "weights_sha256"  # of the weights file a finished training wrote


@dataclass
class TrainingRun:
    client: Any  # mlflow.tracking.MlflowClient
    run_id: str
    experiment: str
    monitor: Any = None  # mlflow's SystemMetricsMonitor while training runs

    @classmethod
    def open(
        cls,
        run_dir: Path,
        resume: bool,
        experiment: str,
        name: str,
        params: dict[str, Any],
        tags: dict[str, str],
        dataset: Any = None,
        extra_datasets: Any = (),
    ) -> TrainingRun:
        """Reopen the run of an interrupted training (``resume``) or create a new one with ``params``
        and ``dataset`` (:func:`lightsaft.tracking.dataset_of`) as its training input (and each
        ``data.extra_train`` root, :func:`~lightsaft.tracking.store.extra_datasets_of`), named after
        the DVC experiment that runs it, else ``name``."""
        client = store.client()
        record = run_dir / RECORD
        if resume and record.exists():
            run_id = records.read_run_file(record)["run_id"]
            client.update_run(run_id, status="RUNNING")
            return cls(client, run_id, experiment, _system_metrics(run_id, resume=True))
        exp_id = store.experiment_id(client, experiment)
        name = os.environ.get("DVC_EXP_NAME") or name
        run_id = client.create_run(exp_id, run_name=name, tags={**store.source_tags(), **tags}).info.run_id
        records.write_run_file(record, run_id, experiment)  # first: a kill from here on is found by abandon
        store.log_params(client, run_id, flatten(params))
        if dataset is not None:
            store.log_dataset(client, run_id, dataset, "training")
        for extra in extra_datasets:
            store.log_dataset(client, run_id, extra, "training")
        store.update_description(client, run_id)
        return cls(client, run_id, experiment, _system_metrics(run_id, resume=False))

    @staticmethod
    def abandon(run_dir: Path) -> None:
        """A training that starts over: the run of the one it replaces ends as KILLED if it never
        ended (its process was killed outright)."""
        record = run_dir / RECORD
        if not record.exists():
            return
        client = store.client()
        run_id = records.read_run_file(record)["run_id"]
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, "KILLED")

    def link_source(self, path: Path | None, sha256: str) -> str | None:
        """Fine-tuning: when the weights trained from are one of our trained models, link its run
        (tag ``init_from_run``) and its logged model (an input of this run). Found by the run record
        that DVC keeps beside the weights file (``models/mlflow_run.json``), else by the weights'
        sha256, which :meth:`finish` records on every run. Returns the source run's id, or None."""
        found = _run_of_weights(self.client, path, sha256)
        if found is None:
            return None
        run_id, model_id = found
        self.client.set_tag(self.run_id, "init_from_run", run_id)
        if model_id:
            from mlflow.entities import LoggedModelInput

            self.client.set_tag(self.run_id, "init_from_model", model_id)
            self.client.log_inputs(self.run_id, models=[LoggedModelInput(model_id)])
        return run_id

    def logger(self):
        from pytorch_lightning.loggers import MLFlowLogger

        return MLFlowLogger(tracking_uri=store.tracking_uri(), run_id=self.run_id)

    def end_interrupted(self, error: BaseException) -> None:
        """Ctrl+C / SIGTERM (resumable): KILLED; any other exception: FAILED."""
        self._stop_monitor()
        interrupted = isinstance(error, KeyboardInterrupt | Terminated | SystemExit)
        self.client.set_terminated(self.run_id, "KILLED" if interrupted else "FAILED")

    def finish(self, metrics: dict[str, Any], weights: Path, model_params: dict[str, Any], step: int) -> str:
        """The weights file as the run's logged model, the final figures (of the run and of that
        model), the description, then FINISHED. Returns the logged model's id."""
        self._stop_monitor()
        model_id = log_model(self.client, self.run_id, weights, model_params, step)
        self.client.set_tag(self.run_id, WEIGHTS_TAG, file_sha256(weights))  # found again by link_source
        numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        store.log_metrics(self.client, self.run_id, numbers, step=step, model_id=model_id)
        store.update_description(self.client, self.run_id)
        self.client.set_terminated(self.run_id, "FINISHED")
        return model_id

    def _stop_monitor(self) -> None:
        if self.monitor is not None:
            self.monitor.finish()  # joins its thread and flushes the last samples
            self.monitor = None


def _run_of_weights(client, path: Path | None, sha256: str) -> tuple[str, str | None] | None:
    """(run id, logged model id) of the training that wrote the weights file of ``sha256``."""
    from mlflow.exceptions import MlflowException

    record = path.parent / RUN_FILE.name if path is not None else None
    if record is not None and record.is_file():
        try:
            info = records.read_run_file(record)
            run = client.get_run(info["run_id"])
        except (records.TrackingError, MlflowException):
            run = None  # another tracking store's run, or a damaged record: look the weights up instead
        if run is not None and run.data.tags.get(WEIGHTS_TAG, sha256) == sha256:
            return run.info.run_id, info.get("model_id")
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return None
    runs = client.search_runs(
        experiments, f"tags.{WEIGHTS_TAG} = '{sha256}'", max_results=1, order_by=["attributes.start_time DESC"]
    )
    if not runs:
        return None
    outputs = sorted(runs[0].outputs.model_outputs if runs[0].outputs else [], key=lambda o: o.step)
    return runs[0].info.run_id, outputs[-1].model_id if outputs else None


def _system_metrics(run_id: str, resume: bool) -> Any:
    """MLflow's system metrics monitor on the run (every 10 s; MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL
    changes it), started; on a resumed run it continues the step count."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # no "started"/"no GPU" chatter
    monitor = SystemMetricsMonitor(run_id, resume_logging=resume, tracking_uri=store.tracking_uri())
    monitor.start()
    return monitor
