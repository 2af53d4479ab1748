"""The ``train`` stage: train (or resume) the model of the params on the spectrogram cache.

Checkpoints of a training in progress live in ``<repo>/.lightsaft/train/<fingerprint>/`` (outside
DVC, keyed by what defines the training), so an interrupted ``dvc repro`` or a re-queued
experiment can resume them with ``runtime.train.resume: true``. :func:`train` returns what the
training produced; :func:`write_outputs` (called by the stage) turns it into the DVC outputs,
each through a temporary file and a rename, and closes the MLflow run.
"""

from __future__ import annotations

import hashlib
import json
import resource
import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.plugins.environments import SLURMEnvironment
from pytorch_lightning.strategies import DDPStrategy
from pytorch_lightning.utilities.exceptions import MisconfigurationException, SIGTERMException
from torch.utils.data import DataLoader

from . import layout
from .data.cache import Cache
from .data.datasets import TrainDataset, ValidDataset, seed_draws, train_batches
from .data.extra import check_extra_roots
from .devices import check_sync_batchnorm, claim_devices, visible_gpus
from .errors import ConfigError, LightSAFTError, Terminated
from .model.unet import Separator, count_parameters
from .paths import atomic_path, file_lock, project_root, write_text_atomic
from .schema import flatten
from .spectral import edge_trim
from .tracking import records, store
from .tracking.training_run import TrainingRun
from .training.callbacks import EpochCurves, InterruptCheckpoint, StartingPoint, StopTogether
from .training.ema import EMA, averaged_weights
from .training.lightning_module import LightSAFTModule
from .training.ranks import devices_per_node, global_rank
from .training.sources import given_model, source_file, source_tags
from .training.val_sdr import ValSdr
from .weights.ours import save_weights

SECTIONS = ("model", "train", "trainer")  # what defines a training (with its data); not mlflow: where it is recorded
INTERRUPTED = "interrupted.ckpt"  # where a stopped training saves its state (InterruptCheckpoint)


@dataclass(frozen=True)
class TrainOutputs:
    """Where :func:`write_outputs` writes: the stage's DVC outputs by default."""

    weights: Path = layout.WEIGHTS
    checkpoint: Path = layout.CHECKPOINT
    metrics: Path = layout.TRAIN_METRICS
    curves: Path = layout.TRAIN_CURVES
    run_file: Path = layout.RUN_FILE

    @classmethod
    def under(cls, root: str | Path) -> TrainOutputs:
        """The same layout below another folder (tests, benchmarks)."""
        return cls(*(Path(root) / p for p in (cls.weights, cls.checkpoint, cls.metrics, cls.curves, cls.run_file)))


@dataclass
class TrainResult:
    """What a finished training hands to :func:`write_outputs`."""

    model: Separator  # at its best validation epoch
    model_params: dict[str, Any]
    metrics: dict[str, Any]  # -> metrics/train.json and the MLflow run
    curves: str  # CSV text -> plots/train_curves.csv
    checkpoint: Path  # the full Lightning checkpoint of that epoch (resumable, fine-tunable)
    run: TrainingRun
    work_dir: Path  # the training's checkpoint folder, removed once the outputs are written


def resolve_precision(precision: str, accelerator: str) -> str:
    """``auto``: bf16-mixed on a GPU that supports it, else full fp32."""
    if precision != "auto":
        return "32-true" if precision == "32" else precision
    gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if gpu and torch.cuda.is_bf16_supported() else "32-true"


def fingerprint(params: dict[str, Any], cache: Cache) -> str:
    """Identity of a training: the result-changing params it reads and the data it trains on.
    Runtime settings (``runtime.*``: resume, workers) are not part of it."""
    keyed = flatten({s: params[s] for s in SECTIONS})
    keyed["data_manifest_sha256"] = cache.digest()
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train(params: dict[str, Any], cache_dir: str | Path = layout.CACHE) -> TrainResult | None:
    """Train (or resume) the model of ``params`` on the cache; None on DDP ranks other than zero.

    Under DDP every process runs this; its global rank (from the launcher's environment, see
    :mod:`lightsaft.training.ranks`) is known before anything happens: only rank zero takes the
    lock, opens the MLflow run and returns a result.
    """
    m, tr = params["model"], params["trainer"]
    check_sync_batchnorm(tr["accelerator"], tr["sync_batchnorm"])
    rank = global_rank(devices_per_node(tr["accelerator"], tr["devices"]))
    cache = Cache(cache_dir, n_fft=m["n_fft"], hop_length=m["hop_length"])
    run_dir = project_root() / ".lightsaft" / "train" / fingerprint(params, cache)
    if params["train"]["pretrained"]:  # nothing to train: one process, no Trainer
        with _exclusive(run_dir):
            return _from_pretrained(params, cache, run_dir)
    check_extra_roots(cache)  # data.extra_train: the folders are still what download listed
    if rank != 0:  # DDP: the other ranks follow rank zero
        return _train(params, cache, run_dir, tr["devices"], rank)
    gpus = visible_gpus() if tr["accelerator"] in ("auto", "gpu", "cuda") else []
    with _exclusive(run_dir), claim_devices(tr["devices"], gpus) as devices:
        return _train(params, cache, run_dir, devices, rank)


def _from_pretrained(params: dict[str, Any], cache: Cache, run_dir: Path) -> TrainResult:
    """``train.pretrained``: the given model instead of a trained one, with the same outputs (its
    weights, a Lightning checkpoint to fine-tune from, figures that say where it came from, curves
    with their header only) and one MLflow run, so everything downstream works unchanged."""
    started = time.time()
    given = given_model(params, "pretrained")
    module = LightSAFTModule(params["model"], params["train"])
    module.model.load_state_dict(given.model.state_dict())
    if run_dir.exists():
        TrainingRun.abandon(run_dir)
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    checkpoint = run_dir / "pretrained.ckpt"
    torch.save(
        {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "epoch": 0, "global_step": 0,
         "pytorch-lightning_version": pl.__version__},
        checkpoint,
    )  # fmt: skip
    m = params["model"]
    run = TrainingRun.open(
        run_dir,
        False,
        params["mlflow"]["experiment"],
        f"pretrained-{given.name}",
        {**flatten({s: params[s] for s in SECTIONS}), **_data_params(cache)},
        {**_tags(params, cache), "stage": "train (pretrained)", "pretrained": given.reference,
         "pretrained_sha256": given.sha256},
        store.dataset_of(cache),
    )  # fmt: skip
    metrics = {
        "pretrained": given.reference,
        "pretrained_sha256": given.sha256,
        "pretrained_verified": given.verified,
        "best_val_loss": None,
        "epochs": 0,
        "steps": 0,
        "wall_time_s": round(time.time() - started, 1),
        "param_count": count_parameters(module.model),
        "variant": m["variant"],
    }
    return TrainResult(module.model, m, metrics, EpochCurves.header(), checkpoint, run, run_dir)


def _train(params: dict[str, Any], cache: Cache, run_dir: Path, devices: Any, rank: int) -> TrainResult | None:
    started = time.time()
    m, t, tr, rt = params["model"], params["train"], params["trainer"], params["runtime"]["train"]
    ckpt_dir = run_dir / "checkpoints"
    resume_from = _latest_checkpoint(ckpt_dir) if rt["resume"] else None
    # Per rank (train.rank_sampling): items are drawn from the global generator; DDP copies rank zero's weights.
    worker_init = seed_draws(t["seed"], rank, t["rank_sampling"])
    train_loader, valid_loader = _loaders(params, cache, worker_init)
    module = LightSAFTModule(m, t)
    source = given_model(params, "init_from") if t["init_from"] else None  # checked on resume too: its identity
    if source is not None and resume_from is None:  # fine-tuning: its weights, a fresh optimizer and schedule
        module.model.load_state_dict(source.model.state_dict())
    best, last = _checkpoints(t, ckpt_dir)
    by_sdr = t["select_by"] == "val_sdr"
    curves = EpochCurves(run_dir / "train_curves.csv", ("val_sdr",) if by_sdr else ())  # kept up to date
    ema = EMA(t["ema_decay"]) if t["ema_decay"] is not None else None
    start = StartingPoint() if source is not None else None
    sdr = ValSdr(len(valid_loader.dataset.names), t["val_sdr_every"]) if by_sdr else None
    # in this order: on an exception the average gives the trained weights back before InterruptCheckpoint saves
    callbacks = [best, last if last is not best else None, curves, StopTogether(), ema,
                 InterruptCheckpoint(ckpt_dir / INTERRUPTED), start, sdr]  # fmt: skip
    callbacks = [c for c in callbacks if c is not None]
    if t["early_stop_patience"] is not None:
        callbacks.append(
            EarlyStopping(
                monitor="val_loss",
                mode="min",
                patience=t["early_stop_patience"],
                min_delta=t["early_stop_min_delta"],
                check_on_train_epoch_end=False,
            )
        )
    precision = resolve_precision(str(tr["precision"]), tr["accelerator"])
    if rank == 0:  # the one rank with a logger (the MLflow run)
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    # Built before the MLflow run: a setting this machine cannot run must not leave a run behind.
    # fine-tuning: the sanity check validates everything, before the first step (StartingPoint)
    sanity = -1 if start is not None and resume_from is None else 2
    trainer = _trainer(tr, devices, precision, callbacks, run_dir, rt["ddp_timeout_s"], sanity)
    if trainer.global_rank != rank:
        raise LightSAFTError(
            f"this process took its global rank for {rank} from its environment, but Lightning gives it "
            f"{trainer.global_rank}: an unknown launcher? Start it with torchrun, srun or Lightning's launcher "
            f"(NODE_RANK per machine); see README, 'Several GPUs and several machines'"
        )
    if rank != 0:
        _fit(trainer, module, train_loader, valid_loader, resume_from)
        return None
    if rt["resume"] and resume_from is None:
        print(f"runtime.train.resume: no checkpoint of this configuration in {run_dir}; starting a new training")
    if resume_from is None and run_dir.exists():
        TrainingRun.abandon(run_dir)
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    run = TrainingRun.open(
        run_dir,
        resume_from is not None,
        params["mlflow"]["experiment"],
        f"{m['variant']}-dk{m['dk']}-tdfs{m['num_tdfs']}",
        {**flatten({s: params[s] for s in SECTIONS}), **_data_params(cache)},
        {**_tags(params, cache), **(source_tags(source, "init_from") if source else {})},
        store.dataset_of(cache),
        store.extra_datasets_of(cache),
    )
    if source is not None and resume_from is None:
        run.link_source(source_file(source), source.sha256)
    try:  # from here on, however the training ends, its run ends with it
        trainer.logger = run.logger()
        _fit(trainer, module, train_loader, valid_loader, resume_from)
    except BaseException as e:
        run.end_interrupted(e)
        raise
    return _result(params, trainer, module, (best, last, ema, start, source), curves, run, run_dir, precision, started)


def _checkpoints(t: dict[str, Any], ckpt_dir: Path) -> tuple[ModelCheckpoint, ModelCheckpoint]:
    """The best-k checkpoints by ``train.select_by``, and the last one (to resume from): one
    callback for val_loss, which every validation logs; two for val_sdr, scored every
    ``train.val_sdr_every`` epochs while the last checkpoint is kept every epoch."""
    if t["select_by"] == "val_loss":
        best = ModelCheckpoint(
            dirpath=ckpt_dir,
            filename="best-{epoch}-{val_loss:.5f}",
            monitor="val_loss",
            mode="min",
            save_top_k=t["save_top_k"],
            save_last=True,
        )
        return best, best
    best = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best-{epoch}-{val_sdr:.3f}",
        monitor="val_sdr",
        mode="max",
        save_top_k=t["save_top_k"],
        every_n_epochs=t["val_sdr_every"],
    )
    return best, ModelCheckpoint(dirpath=ckpt_dir, save_top_k=0, save_last=True)


def _trainer(
    tr: dict[str, Any],
    devices: Any,
    precision: str,
    callbacks: list,
    run_dir: Path,
    timeout_s: int,
    num_sanity_val_steps: int = 2,
) -> pl.Trainer:
    strategy = tr["strategy"]
    if strategy.startswith("ddp"):  # ours, for its process-group timeout: a lost rank fails the others
        unused = strategy == "ddp_find_unused_parameters_true"
        strategy = DDPStrategy(find_unused_parameters=unused, timeout=timedelta(seconds=timeout_s))
    try:
        return pl.Trainer(
            accelerator=tr["accelerator"],
            devices=devices,
            num_nodes=tr["num_nodes"],
            strategy=strategy,
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
            num_sanity_val_steps=num_sanity_val_steps,
            callbacks=callbacks,
            logger=False,
            default_root_dir=run_dir,
            enable_model_summary=False,
            # Under SLURM one component requeues a job, the study's (submitit): not Lightning too.
            plugins=[SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else None,
        )
    except MisconfigurationException as e:
        raise ConfigError(
            f"trainer settings accelerator={tr['accelerator']!r}, devices={tr['devices']!r}, "
            f"num_nodes={tr['num_nodes']!r}, strategy={tr['strategy']!r}, precision={precision!r} "
            f"cannot run here: {e}"
        ) from None


def _fit(trainer: pl.Trainer, module, train_loader, valid_loader, resume_from: Path | None) -> None:
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
    try:
        trainer.fit(module, train_loader, valid_loader, ckpt_path=resume_from, weights_only=True)
    except SIGTERMException:
        raise Terminated() from None
    except SystemExit:
        if trainer.interrupted:  # Lightning turns Ctrl+C into exit(1) once it has saved: Ctrl+C it is
            raise KeyboardInterrupt() from None
        raise


def _result(params, trainer, module, kept, curves, run, run_dir, precision, started) -> TrainResult:
    """The best epoch's weights (its moving average with ``train.ema_decay``) and checkpoint, the
    figures and curves of the finished training."""
    best, last, ema, start, source = kept
    checkpoint = Path(best.best_model_path or last.last_model_path or run_dir / "final.ckpt")
    if best.best_model_path or last.last_model_path:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    else:  # training stopped (max_steps) before any validation: keep the final state
        state = trainer._checkpoint_connector.dump_checkpoint()
        torch.save(state, checkpoint)  # rank zero alone: no barrier
    module.load_state_dict(state["state_dict"])
    if ema is not None:
        module.model.load_state_dict(averaged_weights(state))
    gpu_peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    t, score = params["train"], float(best.best_model_score) if best.best_model_score is not None else None
    val_losses = [r["val_loss"] for r in curves.rows if r["val_loss"] == r["val_loss"]]
    metrics = {
        "best_val_loss": score if t["select_by"] == "val_loss" else min(val_losses, default=None),
        **({"best_val_sdr": score} if t["select_by"] == "val_sdr" else {}),
        "selected_by": t["select_by"],
        "selected_epoch": state.get("epoch"),
        **({"init_from": source.reference, "init_from_sha256": source.sha256} if source is not None else {}),
        **({"init_val_loss": start.val_loss} if start is not None else {}),
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "wall_time_s": round(time.time() - started, 1),
        "param_count": count_parameters(module.model),
        "peak_cpu_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "peak_gpu_mem_gb": round(gpu_peak, 3) if gpu_peak is not None else None,
        "precision": precision,
    }
    return TrainResult(module.model, params["model"], metrics, curves.text(), checkpoint, run, run_dir)


def write_outputs(result: TrainResult, outputs: TrainOutputs = TrainOutputs()) -> None:
    """The train stage's DVC outputs, each written atomically, then the MLflow run closed."""
    save_weights(outputs.weights, result.model, result.model_params)
    write_text_atomic(outputs.curves, result.curves)
    with atomic_path(outputs.checkpoint) as tmp:
        shutil.copyfile(result.checkpoint, tmp)
    write_text_atomic(outputs.metrics, json.dumps(result.metrics, indent=2) + "\n")
    model_id = result.run.finish(
        result.metrics, outputs.weights, result.model_params, step=result.metrics.get("steps", 0)
    )
    records.write_run_file(outputs.run_file, result.run.run_id, result.run.experiment, model_id)
    shutil.rmtree(result.work_dir, ignore_errors=True)


def _data_params(cache: Cache) -> dict[str, Any]:
    """What the training data was, as MLflow params (read from the cache, which records it)."""
    extra = [root["root"] for root in cache.manifest.get("extra_train", [])]  # data.extra_train, as prepared
    return {"data.source": cache.manifest["source"], "prepare.dtype": cache.manifest["dtype"],
            **({"data.extra_train": extra} if extra else {})}  # fmt: skip


def _tags(params: dict[str, Any], cache: Cache) -> dict[str, str]:
    m = params["model"]
    return {
        "variant": m["variant"],
        "stage": "train",
        "data_manifest_sha256": cache.digest(),
        "params_fingerprint": fingerprint(params, cache),
    }


def _latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The checkpoint furthest along: the interrupt one when it holds batches of an unfinished
    epoch; at the same step an end-of-epoch one, whose loop state Lightning restores as it
    expects (a resume after a stop between two epochs once lost an epoch: 24 steps of 32)."""
    found, torn = {}, []
    for path in sorted(ckpt_dir.glob("*.ckpt")):
        try:
            step = torch.load(path, map_location="cpu", weights_only=True).get("global_step", -1)
        except (EOFError, RuntimeError) as e:  # a file torn by SIGKILL: an older one is complete
            torn.append(f"{path.name} ({str(e).splitlines()[0]})")
            continue
        found[path] = (step, path.name != INTERRUPTED)
    if torn and not found:
        raise LightSAFTError(
            f"runtime.train.resume: no checkpoint in {ckpt_dir} can be read: {'; '.join(torn)}. "
            f"Move the folder away to start a new training"
        )
    return max(found, key=found.get) if found else None


def _loaders(params: dict[str, Any], cache: Cache, worker_init: Any = None) -> tuple[DataLoader, DataLoader]:
    m, t, tr = params["model"], params["train"], params["trainer"]
    workers = params["runtime"]["train"]["num_workers"]
    train_set = TrainDataset(
        cache,
        m["num_frame"],
        t["items_per_epoch"],
        t["mix_across_tracks"],
        t["augment_gain"],
        t["augment_channel_swap"],
    )
    # the official validation windows: cores tiling each track, `trim` zeros of context on each side
    trim = edge_trim(m["hop_length"], m["num_frame"])
    where = t["select_by"] == "val_sdr"  # the items say where they lie, to assemble whole-track scores
    valid_set = ValidDataset(cache, m["num_frame"], t["valid_chunks_per_track"], trim=trim, where=where)
    if len(train_set) < tr["batch_size"]:
        raise ConfigError(
            f"trainer.batch_size = {tr['batch_size']} is larger than an epoch "
            f"({len(train_set)} items): lower it or set train.items_per_epoch"
        )
    common = {"num_workers": workers, "pin_memory": torch.cuda.is_available(), "persistent_workers": workers > 0}
    batch = tr["batch_size"]
    train_loader = train_batches(train_set, batch, worker_init_fn=worker_init, **common)
    return train_loader, DataLoader(valid_set, batch, shuffle=False, **common)


@contextmanager
def _exclusive(run_dir: Path) -> Iterator[None]:
    """One training per configuration at a time: a duplicate experiment running at the same time
    (queued twice) would share this one's checkpoint folder, and delete it when it finished."""
    with ExitStack() as held:
        try:
            held.enter_context(file_lock(run_dir.parent.parent / "locks" / f"{run_dir.name}.lock", wait=False))
        except BlockingIOError:
            raise LightSAFTError(
                f"another training of this configuration is running (checkpoints in {run_dir}); wait for it "
                f"to finish (a rerun then reuses its result), or change train.seed to train a second model"
            ) from None
        yield
