"""The ``train`` stage: Lightning trainer, callbacks, resume, MLflow run and the stage outputs.

Checkpoints of a training in progress live in ``<repo>/.lightsaft/train/<fingerprint>/`` (outside
DVC, keyed by the params that define the training), so an interrupted ``dvc repro`` or a
re-queued experiment can resume them with ``train.resume: true``. Only a finished training
writes the DVC outputs, each through a temporary file and a rename.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import resource
import shutil
import time
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.utilities.exceptions import MisconfigurationException, SIGTERMException
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from torch.utils.data import DataLoader

from . import tracking
from .config import ConfigError, flatten
from .data.cache import Cache
from .data.datasets import TrainDataset, ValidDataset, train_batches
from .errors import LightSAFTError
from .model import count_parameters, save_weights
from .paths import atomic_path, file_lock, project_root, write_text_atomic
from .separate import edge_trim
from .stage import Terminated
from .training.module import LightSAFTModule

TRACKED_SECTIONS = ("data", "prepare", "model", "train", "trainer", "mlflow")


class _QuietLightning(logging.Filter):
    """Drop Lightning's advertisements and restatements of our own settings from the stage log."""

    NOISE = ("litlogger", "was configured so 100%")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in self.NOISE)


logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_QuietLightning())
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


@dataclass(frozen=True)
class TrainOutputs:
    """Where the stage writes (the DVC outs of ``train``)."""

    models: Path = Path("models")
    metrics: Path = Path("metrics/train.json")
    curves: Path = Path("plots/train_curves.csv")

    @property
    def weights(self) -> Path:
        return self.models / "weights.pt"

    @property
    def checkpoint(self) -> Path:
        """The full Lightning checkpoint of the best epoch (resumable, fine-tunable)."""
        return self.models / "best.ckpt"

    @property
    def run_file(self) -> Path:
        return self.models / "mlflow_run.json"


def resolve_precision(precision: str, accelerator: str) -> str:
    """``auto``: bf16-mixed on a GPU that supports it, else full fp32."""
    if precision != "auto":
        return "32-true" if precision == "32" else precision
    gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if gpu and torch.cuda.is_bf16_supported() else "32-true"


def fingerprint(params: dict[str, Any]) -> str:
    """Identity of a training: every tracked param except ``train.resume``."""
    keyed = {k: v for k, v in flatten({s: params[s] for s in TRACKED_SECTIONS}).items() if k != "train.resume"}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:16]


class EpochCurves(Callback):
    """Per-epoch rows (losses, lr, time, memory) for DVC plots; kept in checkpoints for resume."""

    COLUMNS = ("epoch", "step", "train_loss", "val_loss", "lr", "epoch_time_s", "gpu_mem_gb")

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict[str, float]] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        m = trainer.callback_metrics
        elapsed = time.perf_counter() - self._start
        gpu = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
        row = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "train_loss": float(m.get("train_loss_epoch", float("nan"))),
            "val_loss": float(m.get("val_loss", float("nan"))),
            "lr": trainer.optimizers[0].param_groups[0]["lr"],
            "epoch_time_s": round(elapsed, 3),
            "gpu_mem_gb": round(gpu, 3),
        }
        self.rows.append(row)
        pl_module.log_dict({"epoch_time_s": elapsed, **({"gpu_mem_gb": gpu} if gpu else {})}, on_epoch=True)
        lines = [",".join(self.COLUMNS)] + [",".join(str(r[c]) for c in self.COLUMNS) for r in self.rows]
        if trainer.is_global_zero:
            write_text_atomic(self.path, "\n".join(lines) + "\n")

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict["rows"])


class InterruptCheckpoint(Callback):
    """On Ctrl+C / SIGTERM / any exception, save where training stood (Lightning raises them
    between batches, so the state is consistent)."""

    def __init__(self, path: Path):
        self.path = path

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if trainer.world_size > 1:  # saving waits for every rank, and one rank alone failed: last.ckpt it is
            return
        trainer.save_checkpoint(self.path)
        print(
            f"\ntraining interrupted ({type(exception).__name__}); checkpoint saved to {self.path}.\n"
            f"Resume with: dvc exp run -S train.resume=true (or set train.resume: true and dvc repro)"
        )


def _latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The checkpoint furthest along (the interrupt one may be ahead of last.ckpt)."""
    best, best_step, torn = None, -1, []
    for path in ckpt_dir.glob("*.ckpt"):
        try:
            step = torch.load(path, map_location="cpu", weights_only=True).get("global_step", -1)
        except (EOFError, RuntimeError) as e:  # a file torn by SIGKILL: an older one is complete
            torn.append(f"{path.name} ({str(e).splitlines()[0]})")
            continue
        if step > best_step:
            best, best_step = path, step
    if torn and best is None:
        raise LightSAFTError(
            f"train.resume: no checkpoint in {ckpt_dir} can be read: {'; '.join(torn)}. "
            f"Move the folder away to start a new training"
        )
    return best


def _loaders(params: dict[str, Any], cache: Cache) -> tuple[DataLoader, DataLoader]:
    m, t, tr = params["model"], params["train"], params["trainer"]
    train_set = TrainDataset(
        cache,
        m["num_frame"],
        t["items_per_epoch"],
        t["mix_across_tracks"],
        t["augment_gain"],
        t["augment_channel_swap"],
    )
    trim = edge_trim(m["hop_length"], m["num_frame"])  # official validation windows: trim zeros each side
    valid_set = ValidDataset(cache, m["num_frame"], t["valid_chunks_per_track"], trim=trim)
    common = {
        "num_workers": tr["num_workers"],
        "pin_memory": torch.cuda.is_available(),
        "persistent_workers": tr["num_workers"] > 0,
    }
    if len(train_set) < tr["batch_size"]:
        raise ConfigError(
            f"trainer.batch_size = {tr['batch_size']} is larger than an epoch "
            f"({len(train_set)} items): lower it or set train.items_per_epoch"
        )
    batch = tr["batch_size"]
    return train_batches(train_set, batch, **common), DataLoader(valid_set, batch, shuffle=False, **common)


def _start_run(params: dict[str, Any], run_dir: Path, resume_from: Path | None, cache: Cache):
    """Create the MLflow run (or reopen the interrupted one) and log params and tags."""
    client = tracking.client()
    run_record = run_dir / "run.json"
    if resume_from is not None and run_record.exists():
        run_id = tracking.read_run_file(run_record)["run_id"]
        client.update_run(run_id, status="RUNNING")
        return client, run_id
    exp_id = tracking.experiment_id(client, params["mlflow"]["experiment"])
    m = params["model"]
    tags = {
        **tracking.git_tags(),
        "variant": m["variant"],
        "stage": "train",
        "data_manifest_sha256": hashlib.sha256(json.dumps(cache.manifest, sort_keys=True).encode()).hexdigest(),
        "params_fingerprint": fingerprint(params),
    }
    name = os.environ.get("DVC_EXP_NAME") or f"{m['variant']}-dk{m['dk']}-tdfs{m['num_tdfs']}"
    run_id = client.create_run(exp_id, run_name=name, tags=tags).info.run_id
    tracking.log_params(client, run_id, flatten({s: params[s] for s in TRACKED_SECTIONS}))
    tracking.write_run_file(run_record, run_id, params["mlflow"]["experiment"])
    return client, run_id


@contextmanager
def _exclusive(run_dir: Path) -> Iterator[None]:
    """One training per configuration at a time: a duplicate experiment running at the same time
    (queued twice) would share this one's checkpoint folder, and delete it when it finished."""
    try:
        with file_lock(run_dir.parent.parent / "locks" / f"{run_dir.name}.lock", wait=False):
            yield
    except BlockingIOError:
        raise LightSAFTError(
            f"another training of this configuration is running (checkpoints in "
            f"{run_dir}); wait for it to finish (a rerun then reuses its result), or "
            f"change train.seed to train a second model"
        ) from None


def visible_gpus(accelerator: str) -> list[str]:
    """Ids of the GPUs training may use (as CUDA_VISIBLE_DEVICES names them)."""
    if accelerator not in ("auto", "gpu", "cuda") or not torch.cuda.is_available():
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [n.strip() for n in env.split(",")] if env else []
    count = torch.cuda.device_count()
    return names[:count] if len(names) >= count else [str(i) for i in range(count)]


@contextmanager
def claim_gpu(devices: Any, gpus: list[str], lock_dir: Path, poll_s: float = 10.0) -> Iterator[Any]:
    """The ``devices`` to train on. One device asked for on a machine with several GPUs: take a
    free one (one lock per GPU) and hold it while training, so that queued experiments
    (``--jobs`` = number of GPUs) run side by side, one per GPU, instead of all on GPU 0."""
    if devices != 1 or len(gpus) < 2:
        yield devices
        return
    with ExitStack() as stack:
        waited = False
        while True:
            for index, name in enumerate(gpus):  # noqa: B007 (index is used after the break)
                try:
                    stack.enter_context(file_lock(lock_dir / f"gpu-{name}.lock", wait=False))
                except BlockingIOError:
                    continue
                print(f"training on GPU {name}")
                break
            else:
                if not waited:
                    print(f"all {len(gpus)} GPUs are taken by other trainings; waiting for one")
                    waited = True
                time.sleep(poll_s)
                continue
            break
        yield [index]


def train(
    params: dict[str, Any], cache_dir: str | Path = "data/cache", outputs: TrainOutputs = TrainOutputs()
) -> dict[str, Any]:
    """Train (or resume) the model of ``params``; write weights, checkpoint, metrics and curves."""
    run_dir = project_root() / ".lightsaft" / "train" / fingerprint(params)
    if rank_zero_only.rank != 0:  # DDP: the other ranks follow rank zero
        return _train(params, cache_dir, outputs, run_dir, params["trainer"]["devices"])
    tr = params["trainer"]
    locks = project_root() / ".lightsaft" / "locks"
    with _exclusive(run_dir), claim_gpu(tr["devices"], visible_gpus(tr["accelerator"]), locks) as devices:
        return _train(params, cache_dir, outputs, run_dir, devices)


def _train(
    params: dict[str, Any], cache_dir: str | Path, outputs: TrainOutputs, run_dir: Path, devices: Any
) -> dict[str, Any]:
    started = time.time()
    m, t, tr = params["model"], params["train"], params["trainer"]
    cache = Cache(cache_dir, n_fft=m["n_fft"], hop_length=m["hop_length"])
    ckpt_dir = run_dir / "checkpoints"
    resume_from = _latest_checkpoint(ckpt_dir) if t["resume"] else None
    # Per rank: items are drawn from the global generator; DDP copies rank zero's initial weights.
    pl.seed_everything(t["seed"] + rank_zero_only.rank, workers=True)
    train_loader, valid_loader = _loaders(params, cache)
    module = LightSAFTModule(m, t)
    best = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best-{epoch}-{val_loss:.5f}",
        monitor="val_loss",
        mode="min",
        save_top_k=t["save_top_k"],
        save_last=True,
    )
    curves = EpochCurves(run_dir / "train_curves.csv")  # copied to the DVC output when training ends
    callbacks = [
        best,
        curves,
        InterruptCheckpoint(ckpt_dir / "interrupted.ckpt"),
        EarlyStopping(
            monitor="val_loss",
            mode="min",
            patience=t["early_stop_patience"],
            min_delta=t["early_stop_min_delta"],
            check_on_train_epoch_end=False,
        ),
        LearningRateMonitor(logging_interval="epoch"),
    ]
    precision = resolve_precision(str(tr["precision"]), tr["accelerator"])
    try:  # before the MLflow run: a setting this machine cannot run must not leave a run behind
        trainer = pl.Trainer(
            accelerator=tr["accelerator"],
            devices=devices,
            strategy=tr["strategy"],
            sync_batchnorm=tr["sync_batchnorm"],
            precision=precision,
            max_epochs=tr["max_epochs"],
            max_steps=tr["max_steps"],
            limit_train_batches=tr["limit_train_batches"],
            limit_val_batches=tr["limit_val_batches"],
            gradient_clip_val=tr["gradient_clip_val"],
            accumulate_grad_batches=tr["accumulate_grad_batches"],
            deterministic=tr["deterministic"],
            log_every_n_steps=tr["log_every_n_steps"],
            check_val_every_n_epoch=tr["check_val_every_n_epoch"],
            callbacks=callbacks,
            logger=False,
            default_root_dir=run_dir,
            enable_model_summary=False,
        )
    except MisconfigurationException as e:
        raise ConfigError(
            f"trainer settings accelerator={tr['accelerator']!r}, devices={tr['devices']!r}, "
            f"strategy={tr['strategy']!r}, precision={precision!r} cannot run here: {e}"
        ) from None
    # DDP re-executes this script per GPU: only rank zero touches files and MLflow.
    client, run_id = None, None
    if rank_zero_only.rank == 0:
        if t["resume"] and resume_from is None:
            print(f"train.resume: no checkpoint of this configuration in {run_dir}; starting a new training")
        if resume_from is None and run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        client, run_id = _start_run(params, run_dir, resume_from, cache)
    trainer.logger = MLFlowLogger(tracking_uri=tracking.tracking_uri(), run_id=run_id)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
    try:
        trainer.fit(module, train_loader, valid_loader, ckpt_path=resume_from, weights_only=True)
    except SIGTERMException:
        raise Terminated() from None
    if not trainer.is_global_zero:
        return {}
    return _finish(params, trainer, module, best, run_dir, outputs, client, run_id, precision, started)


def _finish(params, trainer, module, best, run_dir, outputs, client, run_id, precision, started) -> dict:
    """Write the stage outputs from the best checkpoint and close the MLflow run."""
    best_path = best.best_model_path or best.last_model_path
    if best_path:  # else training stopped (max_steps) before any validation: keep the final state
        module.load_state_dict(torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"])
    save_weights(outputs.weights, module.model, params["model"])
    curves = run_dir / "train_curves.csv"  # absent when max_steps ended training before an epoch did
    write_text_atomic(outputs.curves, curves.read_text() if curves.exists() else ",".join(EpochCurves.COLUMNS) + "\n")
    with atomic_path(outputs.checkpoint) as tmp_ckpt:
        if best_path:
            shutil.copyfile(best_path, tmp_ckpt)
        else:  # rank zero alone, so no trainer.save_checkpoint (it waits for every rank)
            torch.save(trainer._checkpoint_connector.dump_checkpoint(), tmp_ckpt)

    gpu_peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    metrics = {
        "best_val_loss": float(best.best_model_score) if best.best_model_score is not None else None,
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "wall_time_s": round(time.time() - started, 1),
        "param_count": count_parameters(module.model),
        "peak_cpu_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "peak_gpu_mem_gb": round(gpu_peak, 3) if gpu_peak is not None else None,
        "precision": precision,
    }
    write_text_atomic(outputs.metrics, json.dumps(metrics, indent=2) + "\n")
    tracking.log_metrics(
        client, run_id, {k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=trainer.global_step
    )
    client.log_artifact(run_id, str(outputs.weights), "model")
    client.set_terminated(run_id, "FINISHED")
    tracking.write_run_file(outputs.run_file, run_id, params["mlflow"]["experiment"])
    shutil.rmtree(run_dir, ignore_errors=True)
    return metrics
