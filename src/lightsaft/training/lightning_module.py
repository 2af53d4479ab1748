"""The LightningModule: the official LightSAFT training recipe, and nothing else.

Batches come from :mod:`lightsaft.data.datasets`: training items are spectrograms mixed in the
STFT domain, validation items are waveforms (the official ``raw_l1`` validation loss).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch

from ..model.unet import build_model, init_official
from .losses import LOSSES, Target
from .optimizers import OPTIMIZERS


class LightSAFTModule(pl.LightningModule):
    def __init__(self, model_params: dict[str, Any], train_params: dict[str, Any]):
        super().__init__()
        # Checkpoints carry both configs; MLflow gets flattened params from tracking, not from here.
        self.save_hyperparameters(logger=False)
        self.model = build_model(model_params)
        if train_params["init"] == "official":
            init_official(self.model)
        self.train_loss = LOSSES[train_params["train_loss"]]
        self.val_loss = LOSSES[train_params["val_loss"]]
        self.keep_estimates = False  # set by training.val_sdr.ValSdr on the epochs it scores

    def forward(self, spec: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return self.model(spec, condition)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        mixture, target, condition = batch
        loss = self.train_loss(self(mixture, condition), Target(self.model.front, spec=target))
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(condition))
        return loss

    def validation_step(self, batch, batch_idx: int) -> torch.Tensor | dict[str, torch.Tensor]:
        mixture_wave, target_wave, condition = batch[:3]  # a 4th item, where the window lies: for ValSdr
        estimate = self(self.model.front.stft(mixture_wave), condition)
        loss = self.val_loss(estimate, Target(self.model.front, wave=target_wave))
        self.log("val_loss", loss, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(condition))
        if self.keep_estimates:
            return {"loss": loss, "estimate": self.model.front.istft(estimate, length=target_wave.shape[1])}
        return loss

    def configure_optimizers(self):
        p = self.hparams.train_params
        optimizer = OPTIMIZERS[p["optimizer"]](self.parameters(), lr=p["lr"])
        if not p["auto_lr_schedule"]:
            return optimizer
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=p["lr_factor"], patience=p["lr_patience"]
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": "val_loss", "interval": "epoch"},
        }
