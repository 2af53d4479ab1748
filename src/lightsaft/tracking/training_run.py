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
from ..schema import flatten
from . import records, store
from .models import log_model

RECORD = "run.json"


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
    ) -> TrainingRun:
        """Reopen the run of an interrupted training (``resume``) or create a new one with ``params``
        and ``dataset`` (:func:`lightsaft.tracking.dataset_of`) as its training input, named after the
        DVC experiment that runs it, else ``name``."""
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
        numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        store.log_metrics(self.client, self.run_id, numbers, step=step, model_id=model_id)
        store.update_description(self.client, self.run_id)
        self.client.set_terminated(self.run_id, "FINISHED")
        return model_id

    def _stop_monitor(self) -> None:
        if self.monitor is not None:
            self.monitor.finish()  # joins its thread and flushes the last samples
            self.monitor = None


def _system_metrics(run_id: str, resume: bool) -> Any:
    """MLflow's system metrics monitor on the run (every 10 s; MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL
    changes it), started; on a resumed run it continues the step count."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # no "started"/"no GPU" chatter
    monitor = SystemMetricsMonitor(run_id, resume_logging=resume, tracking_uri=store.tracking_uri())
    monitor.start()
    return monitor
