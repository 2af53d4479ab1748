"""Lightning callbacks of the train stage, and the filter that keeps Lightning's chatter out of its log."""

from __future__ import annotations

import logging
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.callbacks import Callback

from ..errors import Terminated
from ..paths import write_text_atomic


class EpochCurves(Callback):
    """Per-epoch rows (losses, lr, time, memory) for DVC plots; kept in checkpoints for resume."""

    COLUMNS = ("epoch", "step", "train_loss", "val_loss", "lr", "epoch_time_s", "gpu_mem_gb")

    def __init__(self, path: Path, metrics: tuple[str, ...] = ()):
        self.path = path
        self.metrics = metrics  # further logged metrics, one column each (val_sdr); NaN on epochs without
        self.rows: list[dict[str, float]] = []
        self._start = 0.0

    @classmethod
    def header(cls, metrics: tuple[str, ...] = ()) -> str:
        return ",".join(cls.COLUMNS + metrics) + "\n"

    def text(self) -> str:
        columns = self.COLUMNS + self.metrics
        return self.header(self.metrics) + "".join(",".join(str(r[c]) for c in columns) + "\n" for r in self.rows)

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()  # a training resumed mid-epoch has no epoch start

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        m = trainer.callback_metrics
        elapsed = time.perf_counter() - self._start
        gpu = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
        self.rows.append(
            {
                "epoch": trainer.current_epoch,
                "step": trainer.global_step,
                "train_loss": float(m.get("train_loss_epoch", float("nan"))),
                "val_loss": float(m.get("val_loss", float("nan"))),
                "lr": trainer.optimizers[0].param_groups[0]["lr"],
                "epoch_time_s": round(elapsed, 3),
                "gpu_mem_gb": round(gpu, 3),
                **{name: float(m.get(name, float("nan"))) for name in self.metrics},
            }
        )
        pl_module.log_dict({"epoch_time_s": elapsed, **({"gpu_mem_gb": gpu} if gpu else {})}, on_epoch=True)
        if trainer.is_global_zero:
            write_text_atomic(self.path, self.text())

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict["rows"])


class StartingPoint(Callback):
    """Fine-tuning (``train.init_from``): the validation loss of the weights trained from, before
    any step. The stage runs the whole validation as Lightning's sanity check; this keeps its
    result (Lightning discards it), logs it as ``init_val_loss`` and keeps it across a resume."""

    def __init__(self):
        self.val_loss: float | None = None

    def on_sanity_check_end(self, trainer, pl_module) -> None:
        if self.val_loss is None and "val_loss" in trainer.callback_metrics:
            self.val_loss = float(trainer.callback_metrics["val_loss"])
            if trainer.logger is not None:
                trainer.logger.log_metrics({"init_val_loss": self.val_loss}, step=0)

    def state_dict(self) -> dict[str, Any]:
        return {"val_loss": self.val_loss}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.val_loss = state_dict["val_loss"]


class InterruptCheckpoint(Callback):
    """On Ctrl+C / SIGTERM / any exception, save where training stood (Lightning raises them
    between batches, so the state is consistent)."""

    def __init__(self, path: Path):
        self.path = path

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if trainer.world_size > 1 and not isinstance(exception, Terminated):
            return  # saving waits for every rank, and one rank alone failed: last.ckpt it is
        trainer.save_checkpoint(self.path, weights_only=False)
        if trainer.is_global_zero:
            print(
                f"\ntraining interrupted ({type(exception).__name__}); checkpoint saved to {self.path}.\n"
                "Resume with: dvc exp run -S runtime.train.resume=true (or set runtime.train.resume: true "
                "and dvc repro)"
            )


class StopTogether(Callback):
    """DDP: a SIGTERM to any process stops every rank at the same batch, so that all end cleanly.

    Lightning's own SIGTERM handler broadcasts from inside the signal handler; that broadcast
    pairs with whatever collective the other ranks run next (a gradient all-reduce), and the
    training hangs until the process-group timeout or breaks (Lightning issue #20806; seen here
    with one signalled node of two). Under DDP this callback takes SIGTERM over for the run: the
    handler only notes the signal, the ranks all-reduce that note after every training batch, and
    all raise :class:`Terminated` at the same batch (then :class:`InterruptCheckpoint` saves, at
    the batch end, where Lightning expects a mid-epoch checkpoint). A signal during validation
    takes effect after the next training batch. A single process keeps Lightning's handling.
    """

    def __init__(self):
        self.signalled = False

    def _take_sigterm(self, trainer) -> None:
        if trainer.world_size > 1:  # after Lightning registered its handler (start of the run)
            signal.signal(signal.SIGTERM, self._note)

    def _note(self, signum, frame) -> None:
        self.signalled = True

    def _stop_if_signalled(self, trainer, pl_module) -> None:
        if trainer.world_size == 1:
            return
        flag = torch.tensor([float(self.signalled)], device=pl_module.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item():
            raise Terminated()

    def on_sanity_check_start(self, trainer, pl_module) -> None:
        self._take_sigterm(trainer)

    def on_train_start(self, trainer, pl_module) -> None:
        self._take_sigterm(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._stop_if_signalled(trainer, pl_module)


class _QuietLightning(logging.Filter):
    """Drop Lightning's advertisements and restatements of our own settings."""

    NOISE = ("litlogger", "was configured so 100%")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in self.NOISE)


def quiet_lightning() -> None:
    """Keep the train stage's log to what a user acts on (called by the stage, not at import)."""
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_QuietLightning())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # On a machine with SLURM installed, outside a job: a hint to use srun, which a local run does not
    # want (inside a job, the study's training is started by srun: training/job_step.py).
    warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system but is not used")
