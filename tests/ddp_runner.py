"""Runs the train stage (``pipeline/train.py``, unchanged) and records what the DDP tests check.

Lightning's launcher starts the other local ranks by running this command again, so every
process of a training records, each in ``$LIGHTSAFT_TEST_RECORDS/<pid>.jsonl``: the items it
draws (with its rank in the process group), and when it opens the MLflow run and writes the
stage outputs. ``LIGHTSAFT_TEST_STEP_S`` makes every training step last that long, so that a
test can signal a training in the middle of its work.
"""

import json
import os
import time
from pathlib import Path

import torch.distributed as dist

from lightsaft import train
from lightsaft.data.datasets import TrainDataset
from lightsaft.tracking.training_run import TrainingRun
from lightsaft.training.lightning_module import LightSAFTModule

RECORDS = Path(os.environ["LIGHTSAFT_TEST_RECORDS"])
STEP_S = float(os.environ.get("LIGHTSAFT_TEST_STEP_S", "0"))
STAGE = Path(__file__).resolve().parents[1] / "pipeline" / "train.py"


def record(event: str, **fields) -> None:
    rank = dist.get_rank() if dist.is_initialized() else None
    with open(RECORDS / f"{os.getpid()}.jsonl", "a") as f:
        f.write(json.dumps({"event": event, "rank": rank, **fields}) + "\n")


draw, step, open_run, write_outputs = (
    TrainDataset.draw,
    LightSAFTModule.training_step,
    TrainingRun.open,
    train.write_outputs,
)


def recorded_draw(self):
    choice = draw(self)
    record("draw", **choice._asdict())
    return choice


def slow_step(self, batch, batch_idx):
    time.sleep(STEP_S)
    return step(self, batch, batch_idx)


def recorded_open(cls, *args, **kwargs):
    record("mlflow_run")
    return open_run(*args, **kwargs)


def recorded_write(*args, **kwargs):
    record("write_outputs")
    return write_outputs(*args, **kwargs)


TrainDataset.draw = recorded_draw
LightSAFTModule.training_step = slow_step
TrainingRun.open = classmethod(recorded_open)
train.write_outputs = recorded_write
# Not runpy: it would put the stage's path in sys.argv[0], which Lightning's launcher runs.
exec(compile(STAGE.read_text(), str(STAGE), "exec"), {"__name__": "__main__", "__file__": str(STAGE)})
