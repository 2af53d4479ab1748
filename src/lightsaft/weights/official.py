"""Read the official LaSAFT / LightSAFT checkpoints (pytorch-lightning 1.x files) without running code.

Such a file pickles, besides tensors and plain containers, three pytorch-lightning names: the
``AttributeDict`` holding the hyper-parameters and the callback classes used as keys of its
``callbacks`` dict. ``torch.load(weights_only=True)`` refuses them; we map the first to ``dict``
and the others to inert stand-in classes, so neither Lightning nor any pickled code runs. Any
other global is refused, naming it; ``trust=True`` is the explicit way past that (full unpickling).

The network's keys carry the framework's prefix (``spec2spec.``, or ``conditional_spec2spec.``
before 2021-01-28) and sit beside the frozen STFT window (``stft.stft.window``). There is no
field saying LaSAFT or LightSAFT: the block keys tell.

Beside the network, a file records how it was trained, as far as it does (:class:`TrainingRecord`):
the framework's hyper-parameters that are not model arguments (the argparse-era trainer passed
every command-line option to the framework, which saved all of them: lr, batch size, seed, GPUs,
precision, ...; the MDX kit's files hold only lr and its neighbours), and the state Lightning saved:
epoch, step, the optimizer's learning rate, the LR scheduler's and the callbacks' state (an
``EarlyStopping`` entry exists only if early stopping ran), the AMP loss scaler's.
"""

from __future__ import annotations

import pickle
import re
import types
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, WeightsError
from ..model.params import MODEL
from ..model.unet import Separator, build_model, count_parameters
from .official_keys import load_official_state_dict

PREFIXES = ("spec2spec.", "conditional_spec2spec.")
WINDOW_KEY = "stft.stft.window"
MODEL_KEYS = tuple(key for key in MODEL.keys if key != "variant")
# The training hyper-parameters shown first, in this order; those of the first line are named
# "not recorded" when a file lacks them.
ESSENTIAL_KEYS = ("lr", "batch_size", "seed", "gpus", "precision", "patience")
HEADLINE_KEYS = (
    *ESSENTIAL_KEYS,
    *("optimizer", "auto_lr_schedule", "num_nodes", "distributed_backend", "accelerator", "sync_batchnorm"),
    *("deterministic", "save_top_k", "max_epochs", "min_epochs", "musdb_root"),
)
PLATEAU_KEYS = ("mode", "factor", "patience", "threshold", "threshold_mode", "cooldown", "min_lrs", "best")
PLATEAU_KEYS += ("num_bad_epochs", "_last_lr")
WINDOW_TOLERANCE = 5e-3  # of a window whose peak is 1

OURS = "a models/best.ckpt of our own training is used through models/weights.pt instead"

_ATTRIBUTE_DICT = "pytorch_lightning.utilities.parsing.AttributeDict"
_CALLBACKS = (
    "pytorch_lightning.callbacks.early_stopping.EarlyStopping",
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
)


class CheckpointError(WeightsError):
    """An official checkpoint that cannot be read or does not describe one of our models."""


def _stand_in(full_name: str) -> type:
    """A class with the callback's name and no behaviour: a distinct dict key, nothing more."""
    module, _, name = full_name.rpartition(".")
    return type(name, (), {"__module__": f"lightsaft.stand_in.{module}", "__doc__": f"Stand-in for {full_name}."})


_STAND_INS: dict[str, Any] = {_ATTRIBUTE_DICT: dict, **{name: _stand_in(name) for name in _CALLBACKS}}


# ---------------------------------------------------------------------------------------
# Reading the file
def load_checkpoint(path: str | Path, trust: bool = False) -> dict[str, Any]:
    """The checkpoint's top-level dict, read with ``weights_only=True`` (``trust``: full unpickling).

    Works on both torch serializations (zip and the legacy one); tensors land on the CPU.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        if trust:
            payload = load_trusted(path)
        else:
            with torch.serialization.safe_globals([(obj, name) for name, obj in _STAND_INS.items()]):
                # mmap (zip files only): the optimizer state, two thirds of a real file, is never read
                payload = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        refused = re.search(r"GLOBAL (\S+)", str(e))
        if refused is None:
            raise CheckpointError(f"{path}: not a readable checkpoint: {_first_line(e)}") from None
        raise CheckpointError(
            f"{path}: refused to load: its pickle names {refused[1]}, which is neither a tensor nor one of the "
            f"pytorch-lightning containers official checkpoints hold, and unpickling it could run code; "
            f"if you trust where the file comes from, import it with --trust"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError, AttributeError, ImportError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt?): {_first_line(e)}") from None
    if not isinstance(payload, Mapping):
        raise CheckpointError(f"{path}: not a pytorch-lightning checkpoint (holds a {type(payload).__name__})")
    return dict(payload)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class _TrustingUnpickler(pickle.Unpickler):
    """Full unpickling, but the pytorch-lightning names still resolve to our stand-ins (no Lightning 1.x needed)."""

    def find_class(self, module: str, name: str) -> Any:
        return _STAND_INS.get(f"{module}.{name}") or super().find_class(module, name)


_trusting_pickle = types.ModuleType("lightsaft_trusting_pickle")
_trusting_pickle.Unpickler = _TrustingUnpickler
_trusting_pickle.load = lambda file, **kwargs: _TrustingUnpickler(file, **kwargs).load()


def load_trusted(path: Path) -> Any:
    """Full unpickling, which runs whatever code the file names: only ever on the user's explicit
    ``--trust`` (the one torch.load without weights_only=True in the code base)."""
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_trusting_pickle)


# ---------------------------------------------------------------------------------------
# Interpreting it
@dataclass
class TrainingRecord:
    """How an official checkpoint was trained, as far as the file records it."""

    hyper_parameters: dict[str, Any]  # every hyper-parameter that is not a model argument, with its value
    epoch: Any = None  # Lightning's fields, as saved
    global_step: Any = None
    lightning_version: Any = None
    lr_when_saved: Any = None  # the optimizer's learning rate at the save
    schedulers: list[Any] = field(
        default_factory=list
    )  # LR scheduler states (ReduceLROnPlateau: factor, patience, ...)
    callbacks: dict[str, Any] = field(default_factory=dict)  # callback class name -> its saved state
    amp_scaler: bool = False  # a mixed-precision loss scaler's state is saved: trained in fp16

    @classmethod
    def of(cls, payload: Mapping[str, Any], hyper_parameters: dict[str, Any]) -> TrainingRecord:
        """From a checkpoint's top-level dict and its non-model hyper-parameters."""
        optimizers = payload.get("optimizer_states") or [{}]
        groups = (optimizers[0].get("param_groups") if isinstance(optimizers[0], Mapping) else None) or [{}]
        callbacks = payload.get("callbacks") or {}
        return cls(
            hyper_parameters,
            payload.get("epoch"),
            payload.get("global_step"),
            payload.get("pytorch-lightning_version"),
            groups[0].get("lr") if isinstance(groups[0], Mapping) else None,
            list(payload.get("lr_schedulers") or []),
            {getattr(key, "__name__", str(key)): state for key, state in callbacks.items()},
            any(key in payload for key in ("native_amp_scaling_state", "amp_scaling_state")),
        )

    def lines(self) -> list[str]:
        """The summary ``lightsaft import-official`` prints."""
        hp = self.hyper_parameters
        shown = [key for key in HEADLINE_KEYS if key in hp]
        lines = [f"hyper-parameters: {_pairs(hp, shown)}" if shown else "hyper-parameters: none besides the model's"]
        missing = [key for key in ESSENTIAL_KEYS if key not in hp]
        if missing:
            lines.append(f"not recorded: {', '.join(missing)}")
        others = [key for key in hp if key not in HEADLINE_KEYS]
        if others:
            lines.append(f"other hyper-parameters: {_pairs(hp, others)}")
        lines.append(
            f"saved at epoch {_show(self.epoch)}, global step {_show(self.global_step)}, by pytorch-lightning "
            f"{_show(self.lightning_version)}"
        )
        if self.lr_when_saved is not None:
            lines.append(f"optimizer learning rate at the save: {_show(self.lr_when_saved)}")
        lines.append(
            "AMP loss scaler state saved: trained in fp16 mixed precision"
            if self.amp_scaler
            else "no AMP loss scaler state (32-bit training, or a file saved without its training state)"
        )
        lines += [f"LR scheduler: {_scheduler(state)}" for state in self.schedulers] or ["LR scheduler: none saved"]
        lines += [f"{name}: {_state(state)}" for name, state in self.callbacks.items()]
        if not self.callbacks:
            lines.append("callbacks: no state saved, so whether early stopping ran is unknown")
        elif "EarlyStopping" not in self.callbacks:
            lines.append("EarlyStopping: no state saved beside the other callbacks': early stopping did not run")
        return lines


def _show(value: Any) -> str:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, float):
        return f"{value:.6g}"
    return repr(value) if isinstance(value, str) else str(value)


def _pairs(values: Mapping[str, Any], keys: list[str]) -> str:
    return ", ".join(f"{key}={_show(values[key])}" for key in keys)


def _scheduler(state: Any) -> str:
    """ReduceLROnPlateau's settings and where it stood; any other scheduler's whole state."""
    if isinstance(state, Mapping) and {"factor", "patience", "num_bad_epochs"} <= set(state):
        return "ReduceLROnPlateau " + _state({key: state[key] for key in PLATEAU_KEYS if key in state})
    return _state(state)


def _state(state: Any) -> str:
    """A saved state dict, its lists of one value unpacked (``min_lrs``, ``_last_lr``)."""
    if not isinstance(state, Mapping):
        return _show(state)
    return ", ".join(
        f"{key}={_show(value[0] if isinstance(value, list | tuple) and len(value) == 1 else value)}"
        for key, value in state.items()
    )


@dataclass
class OfficialModel:
    """What an official checkpoint holds, as our model."""

    model: Separator
    params: dict[str, Any]
    window_deviation: float  # of the file's STFT window from the exact one (which we use)
    training: TrainingRecord = field(default_factory=lambda: TrainingRecord({}))

    @property
    def parameter_count(self) -> int:
        return count_parameters(self.model)


def model_params(hyper_parameters: Any, variant: str, source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Our ``model`` section from the official hyper-parameters (same names), and the other
    hyper-parameters (training's), with their values."""
    if not isinstance(hyper_parameters, Mapping):
        raise CheckpointError(f"{source}: hyper_parameters is a {type(hyper_parameters).__name__}, expected a mapping")
    missing = [key for key in MODEL_KEYS if key not in hyper_parameters]
    if missing:
        raise CheckpointError(
            f"{source}: hyper_parameters lack the model arguments {', '.join(missing)}; "
            f"the official code could not rebuild this model either"
        )
    params = {"variant": variant, **{key: hyper_parameters[key] for key in MODEL_KEYS}}
    return params, {str(key): value for key, value in hyper_parameters.items() if key not in MODEL_KEYS}


def check_window(window: torch.Tensor, n_fft: int, source: str) -> float:
    """The largest deviation of the checkpoint's STFT window from the periodic Hann window of n_fft.

    Small deviations pass (the fixtures differ by 1e-3: rounding, or a little training with the
    official ``unfreeze_stft_from``); we drop the window either way, our front end computes the
    exact one. A different window (another shape, length or kind; a symmetric Hann at n_fft 256
    differs by 1e-2) is refused: the network was trained on other spectrograms.
    """
    if tuple(window.shape) != (n_fft,):
        raise CheckpointError(
            f"{source}: {WINDOW_KEY} has shape {tuple(window.shape)}, expected the periodic Hann window "
            f"of n_fft = {n_fft}; the checkpoint's STFT differs from its hyper_parameters, refusing it"
        )
    deviation = (window.float() - torch.hann_window(n_fft)).abs().max().item()
    if not deviation <= WINDOW_TOLERANCE:  # also refuses NaN
        raise CheckpointError(
            f"{source}: {WINDOW_KEY} is not the periodic Hann window of n_fft = {n_fft} (it differs by up to "
            f"{deviation:.3g}, more than {WINDOW_TOLERANCE}); the network was trained on other spectrograms "
            f"than ours, refusing it"
        )
    return deviation


def network_state(state_dict: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The network's tensors without the framework prefix (the STFT window left out)."""
    network: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if key == WINDOW_KEY:
            continue
        prefix = next((p for p in PREFIXES if key.startswith(p)), None)
        if prefix is None:
            raise CheckpointError(
                f"{source}: unexpected state_dict key {key!r} (official checkpoints hold {WINDOW_KEY} and keys "
                f"starting with {' or '.join(PREFIXES)}; {OURS})"
            )
        network[key[len(prefix) :]] = tensor
    return network


def detect_variant(keys: list[str], source: str) -> str:
    """LaSAFT blocks hold ``tdfs.tdf.*``; LightSAFT blocks ``LaSAFT_bn_layer`` and ``LaSIFT``."""
    lasaft = any(".tdfs.tdf." in key for key in keys)
    lightsaft = any(".LaSAFT_bn_layer." in key or ".LaSIFT." in key for key in keys)
    if lasaft == lightsaft:
        raise CheckpointError(
            f"{source}: cannot tell LaSAFT from LightSAFT: "
            f"{'both' if lasaft else 'neither'} tdfs.tdf.* and LaSAFT_bn_layer/LaSIFT keys are present"
        )
    return "lasaft" if lasaft else "lightsaft"


def convert(payload: Mapping[str, Any], source: str) -> OfficialModel:
    """Our model, strictly filled from an official checkpoint's ``state_dict`` and ``hyper_parameters``."""
    for key in ("state_dict", "hyper_parameters"):
        if key not in payload:
            raise CheckpointError(
                f"{source}: no {key!r} in the checkpoint (keys: {', '.join(map(str, payload))}); "
                f"not an official LaSAFT/LightSAFT checkpoint"
            )
    state_dict = payload["state_dict"]
    if WINDOW_KEY not in state_dict:
        raise CheckpointError(
            f"{source}: no {WINDOW_KEY} in the state_dict: not an official framework checkpoint ({OURS})"
        )
    network = network_state(state_dict, source)
    variant = detect_variant(list(network), source)
    params, training = model_params(payload["hyper_parameters"], variant, source)
    deviation = check_window(state_dict[WINDOW_KEY], params["n_fft"], source)
    try:
        model = build_model(params)
    except ConfigError as e:
        raise CheckpointError(f"{source}: hyper_parameters do not make a valid model: {e}") from None
    try:
        load_official_state_dict(model, network)
    except WeightsError as e:
        raise CheckpointError(f"{source}: {e}") from None
    return OfficialModel(model.eval(), model.params, deviation, TrainingRecord.of(payload, training))


def read_official(path: str | Path, trust: bool = False) -> OfficialModel:
    """Read an official checkpoint file into our model (see :func:`load_checkpoint`, :func:`convert`)."""
    return convert(load_checkpoint(path, trust), str(path))
