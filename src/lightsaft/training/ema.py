"""``train.ema_decay``: an exponential moving average of the weights, validated and kept as the model.

As demucs does: after every optimizer step, ``average = decay * average + (1 - decay) * weights``
over the whole state dict (BatchNorm statistics included; integer buffers are copied), in float32.
Validation runs on the average (so the val loss, the SDR and the checkpoints chosen by them are
the average's), and the trained weights come back for the next step. The average lives in this
callback's state, which Lightning writes into every checkpoint: a resumed training continues it,
and the train stage exports it (:func:`averaged_weights`) as ``weights.pt``. The checkpoint's own
``state_dict`` stays the trained weights, which is what resuming needs.
"""

from __future__ import annotations

from typing import Any

import torch
from pytorch_lightning.callbacks import Callback

STATE_KEY = "EMA"  # of this callback's state in a checkpoint's "callbacks"


class EMA(Callback):
    def __init__(self, decay: float):
        self.decay = decay
        self.average: dict[str, torch.Tensor] | None = None
        self.updates = 0
        self._trained: dict[str, torch.Tensor] | None = None  # the trained weights while validating
        self._step = -1

    @property
    def state_key(self) -> str:
        return STATE_KEY

    def on_fit_start(self, trainer, pl_module) -> None:
        state = pl_module.model.state_dict()
        if self.average is None:  # a new training; a resumed one loaded its average already
            self.average = {
                k: v.detach().clone().float() if v.is_floating_point() else v.clone() for k, v in state.items()
            }
        else:
            self.average = {k: v.to(state[k].device) for k, v in self.average.items()}
        self._step = trainer.global_step

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self._step:  # gradient accumulation: no optimizer step yet
            return
        self._step = trainer.global_step
        for key, value in pl_module.model.state_dict().items():
            if value.is_floating_point():
                self.average[key].lerp_(value.float(), 1 - self.decay)
            else:
                self.average[key].copy_(value)
        self.updates += 1

    def on_validation_start(self, trainer, pl_module) -> None:
        if self.average is None or self._trained is not None:
            return
        model = pl_module.model
        self._trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.average)

    def on_validation_end(self, trainer, pl_module) -> None:
        self._restore(pl_module)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore(pl_module)  # before InterruptCheckpoint saves: the trained weights, not the average

    def _restore(self, pl_module) -> None:
        if self._trained is not None:
            pl_module.model.load_state_dict(self._trained)
            self._trained = None

    def state_dict(self) -> dict[str, Any]:
        average = {k: v.detach().cpu() for k, v in (self.average or {}).items()}
        return {"decay": self.decay, "updates": self.updates, "average": average}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.updates = int(state_dict["updates"])
        self.average = dict(state_dict["average"]) or None


def averaged_weights(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """The moving average a Lightning checkpoint holds (None: trained without ``train.ema_decay``)."""
    state = checkpoint.get("callbacks", {}).get(STATE_KEY)
    return state["average"] if state and state["average"] else None
