"""The MLflow run of one training: opened before ``fit`` (or reopened on resume), closed by the stage.

Its record (``run.json`` in the training's checkpoint folder) lets a resumed training continue the
same run. A training that ends any other way than by finishing is marked KILLED (interrupted)
or FAILED (an error); one killed outright (SIGKILL) is marked KILLED by the next start of the
same training.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import tracking
from ..config import flatten
from ..errors import Terminated

RECORD = "run.json"


@dataclass
class TrainingRun:
    client: Any  # mlflow.tracking.MlflowClient
    run_id: str
    experiment: str

    @classmethod
    def open(
        cls, run_dir: Path, resume: bool, experiment: str, params: dict[str, Any], tags: dict[str, str]
    ) -> TrainingRun:
        """Reopen the run of an interrupted training (``resume``) or create a new one with ``params``."""
        client = tracking.client()
        record = run_dir / RECORD
        if resume and record.exists():
            run_id = tracking.read_run_file(record)["run_id"]
            client.update_run(run_id, status="RUNNING")
            return cls(client, run_id, experiment)
        exp_id = tracking.experiment_id(client, experiment)
        tags = dict(tags)  # the name goes in run_name: MLflow refuses an mlflow.runName tag that differs
        name = os.environ.get("DVC_EXP_NAME") or tags.pop("mlflow.runName", "training")
        tags.pop("mlflow.runName", None)
        run_id = client.create_run(exp_id, run_name=name, tags={**tracking.git_tags(), **tags}).info.run_id
        tracking.write_run_file(record, run_id, experiment)  # first: a kill from here on is found by abandon
        tracking.log_params(client, run_id, flatten(params))
        return cls(client, run_id, experiment)

    @staticmethod
    def abandon(run_dir: Path) -> None:
        """A training that starts over: the run of the one it replaces ends as KILLED if it never
        ended (its process was killed outright)."""
        record = run_dir / RECORD
        if not record.exists():
            return
        client = tracking.client()
        run_id = tracking.read_run_file(record)["run_id"]
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, "KILLED")

    def logger(self):
        from pytorch_lightning.loggers import MLFlowLogger

        return MLFlowLogger(tracking_uri=tracking.tracking_uri(), run_id=self.run_id)

    def end_interrupted(self, error: BaseException) -> None:
        """Ctrl+C / SIGTERM (resumable): KILLED; any other exception: FAILED."""
        interrupted = isinstance(error, KeyboardInterrupt | Terminated | SystemExit)
        self.client.set_terminated(self.run_id, "KILLED" if interrupted else "FAILED")

    def finish(self, metrics: dict[str, Any], weights: Path, step: int) -> None:
        """The final figures and the weights file, then FINISHED."""
        numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        tracking.log_metrics(self.client, self.run_id, numbers, step=step)
        self.client.log_artifact(self.run_id, str(weights), "model")
        self.client.set_terminated(self.run_id, "FINISHED")
