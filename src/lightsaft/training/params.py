"""The ``train`` (the recipe) and ``trainer`` (how and where Lightning runs it) sections, and
``runtime.train``."""

from __future__ import annotations

from typing import Any

from ..schema import RUNTIME, Section, boolean, choice, fail, integer, list_of, number, one_of, sha256, text

LOSSES = ("spec_mse", "spec_l1", "raw_l1")
OPTIMIZERS = ("adam", "adamw")
RANK_SAMPLING = ("distinct", "same")  # DDP: each rank its own items, or every rank the same ones (official)
SELECT_BY = ("val_loss", "val_sdr")  # what picks the kept checkpoints and weights.pt


def check_sources(t: dict[str, Any]) -> None:
    """A model is either imported (``pretrained``) or trained from (``init_from``), not both; a
    pinned hash belongs to a given source."""
    if t["pretrained"] is not None and t["init_from"] is not None:
        fail(
            "train.init_from",
            t["init_from"],
            f"with train.pretrained = {t['pretrained']!r}: pretrained imports a model instead of training, "
            f"init_from trains from one; set one of them to null",
        )
    for key in ("pretrained", "init_from"):
        if t[f"{key}_sha256"] is not None and t[key] is None:
            fail(f"train.{key}_sha256", t[f"{key}_sha256"], f"train.{key} is null: set it, or this to null")


def check_ema(t: dict[str, Any]) -> None:
    if t["ema_decay"] == 1:
        fail("train.ema_decay", 1, "a decay of 1 never moves the average; use e.g. 0.999, or null for no averaging")


def check_val_sdr_every(params: dict[str, Any]) -> None:
    """The SDR is scored on a validation epoch: its period must be one of validation's."""
    t, every = params["train"], params["trainer"]["check_val_every_n_epoch"]
    if t["select_by"] == "val_sdr" and t["val_sdr_every"] % every:
        fail(
            "train.val_sdr_every",
            t["val_sdr_every"],
            f"with trainer.check_val_every_n_epoch = {every}: the SDR is scored on validation epochs, so "
            f"its period must be a multiple of {every}",
        )


PRECISIONS = ("auto", 32, "32", "32-true", "16-mixed", "bf16-mixed", "bf16-true")

TRAIN = Section(
    "train",
    {
        "seed": (2020, integer(0)),
        "rank_sampling": ("distinct", choice(*RANK_SAMPLING)),
        "init": ("official", choice("official", "pytorch")),
        "optimizer": ("adam", choice(*OPTIMIZERS)),
        "lr": (0.001, number(0, lo_open=True)),
        "train_loss": ("spec_mse", choice(*LOSSES)),
        "val_loss": ("raw_l1", choice(*LOSSES)),
        "auto_lr_schedule": (True, boolean()),
        "lr_factor": (0.5, number(0, 1, lo_open=True)),
        "lr_patience": (50, integer(0)),
        "early_stop_patience": (300, integer(1, nullable=True)),  # null: no early stopping
        "early_stop_min_delta": (0.0, number(0)),
        "save_top_k": (5, integer(1)),
        "items_per_epoch": (None, integer(1, nullable=True)),
        "mix_across_tracks": (True, boolean()),
        "augment_gain": (False, boolean()),
        "augment_channel_swap": (False, boolean()),
        "valid_chunks_per_track": (None, integer(1, nullable=True)),
        "pretrained": (None, text(nullable=True)),
        # --- issue 23: fine-tuning, checkpoint choice, weight averaging ---
        "pretrained_sha256": (None, sha256()),
        "init_from": (None, text(nullable=True)),
        "init_from_sha256": (None, sha256()),
        "select_by": ("val_loss", choice(*SELECT_BY)),
        "val_sdr_every": (1, integer(1)),
        "ema_decay": (None, number(0, 1, lo_open=True, nullable=True)),
        # --- end issue 23 ---
    },
    rules=(check_sources, check_ema),
    cross_rules=(check_val_sdr_every,),
)


def check_trainer(tr: dict[str, Any]) -> None:
    """Settings no machine can run (the GPU a setting needs is checked when training starts)."""
    if tr["sync_batchnorm"] and tr["accelerator"] in ("cpu", "mps"):
        fail(
            "trainer.sync_batchnorm",
            True,
            f"with trainer.accelerator = {tr['accelerator']!r}: PyTorch's SyncBatchNorm runs on CUDA GPUs only; "
            f"set trainer.sync_batchnorm: false to train on this device",
        )


TRAINER = Section(
    "trainer",
    {
        "accelerator": ("auto", choice("auto", "cpu", "gpu", "cuda", "mps")),
        "devices": (
            1,
            one_of(
                choice("auto"),
                integer(-1),
                list_of(integer(0), nullable=False),
                hint="expected 'auto', a device count or a list of device ids",
            ),
        ),
        "num_nodes": (1, integer(1)),
        "strategy": ("auto", choice("auto", "ddp", "ddp_find_unused_parameters_true")),
        "sync_batchnorm": (False, boolean()),
        "precision": ("auto", choice(*PRECISIONS)),
        "max_epochs": (1000, integer(-1)),
        "max_steps": (-1, integer(-1)),
        "limit_train_batches": (1.0, number(0, lo_open=True)),
        "limit_val_batches": (1.0, number(0, lo_open=True)),
        "batch_size": (8, integer(2, why=" (BatchNorm cannot train on batches of one item)")),
        "gradient_clip_val": (None, number(0, nullable=True)),
        "accumulate_grad_batches": (1, integer(1)),
        "deterministic": ("warn", choice(True, False, "warn")),
        "log_every_n_steps": (50, integer(1)),
        "check_val_every_n_epoch": (1, integer(1)),
    },
    rules=(check_trainer,),
)

RUNTIME_TRAIN = Section(
    "runtime.train",
    {
        "resume": (False, boolean()),
        "num_workers": (2, integer(0)),
        "ddp_timeout_s": (1800, integer(1)),
    },
    kind=RUNTIME,
)
