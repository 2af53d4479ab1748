"""Our weights file: the inference weights of one model and the model params that rebuild it.

A plain ``torch.save`` of ``{"format", "model_params", "state_dict"}``, loaded with
``weights_only=True`` so a file can never run code. The train stage writes ``models/weights.pt``;
published and official checkpoints are imported into this format (:mod:`lightsaft.weights.published`),
and an import also records ``source_sha256``, the sha256 of the checkpoint it came from.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, WeightsError
from ..model.params import MODEL
from ..model.unet import Separator, build_model
from ..paths import atomic_path

WEIGHTS_FORMAT = 1


def save_weights(
    path: str | Path, model: Separator, model_params: dict[str, Any], source_sha256: str | None = None
) -> None:
    """Write the inference weights file atomically: state_dict + model params + format version (+ the
    sha256 of the checkpoint the weights were imported from)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": WEIGHTS_FORMAT,
        "model_params": dict(model_params),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if source_sha256 is not None:
        payload["source_sha256"] = source_sha256
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def source_sha256(path: str | Path) -> str | None:
    """The sha256 of the checkpoint a weights file was imported from: None for other weights files
    and for unreadable ones (:func:`load_weights` says what is wrong with those). Memory-maps the
    file, so no tensor is read."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError):
        return None
    value = payload.get("source_sha256") if isinstance(payload, dict) else None
    return value if isinstance(value, str) else None


def load_weights(path: str | Path, map_location: str | torch.device = "cpu") -> Separator:
    """Load a weights file written by :func:`save_weights` (never executes pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found (train a model first: dvc repro train)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        why = str(e).splitlines()[0] if str(e) else f"{type(e).__name__} (empty or truncated file?)"
        raise WeightsError(
            f"{path}: not a LightSAFT weights file, or it holds code that weights_only loading refuses to run: {why}"
        ) from None
    if not isinstance(payload, dict) or "state_dict" not in payload or "model_params" not in payload:
        raise WeightsError(
            f"{path}: not a LightSAFT weights file (expected keys format, model_params, "
            f"state_dict; the train stage writes the weights file models/weights.pt, and "
            f"models/best.ckpt is a Lightning checkpoint)"
        )
    if payload.get("format") != WEIGHTS_FORMAT:
        raise WeightsError(
            f"{path}: weights format {payload.get('format')!r}, this version reads "
            f"{WEIGHTS_FORMAT}; re-export it with this version"
        )
    try:
        params = MODEL.validate(payload["model_params"], where="model params")
    except ConfigError as e:
        raise WeightsError(f"{path}: invalid model params in weights file: {e}") from None
    model = build_model(params)
    load_state_dict_checked(model, payload["state_dict"], source=str(path), source_params=payload["model_params"])
    return model.eval()


def load_state_dict_checked(
    model: nn.Module, state_dict: dict[str, torch.Tensor], source: str, source_params: dict[str, Any] | None = None
) -> None:
    """``load_state_dict(strict=True)`` with an error that names the first mismatching key and,
    when the config the weights were trained with is known, how it differs from the model's."""
    ours = model.state_dict()
    for key, tensor in state_dict.items():
        if key in ours and tuple(ours[key].shape) != tuple(tensor.shape):
            raise WeightsError(
                f"{source}: weights do not fit this model config: first mismatch at {key}: "
                f"file {tuple(tensor.shape)} vs model {tuple(ours[key].shape)}"
                f"{_config_diff(source_params, getattr(model, 'params', None))}"
            )
    missing, unexpected = sorted(set(ours) - set(state_dict)), sorted(set(state_dict) - set(ours))
    if missing or unexpected:
        raise WeightsError(
            f"{source}: weights do not fit this model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
            f"{_config_diff(source_params, getattr(model, 'params', None))}"
        )
    model.load_state_dict(state_dict, strict=True)


def _config_diff(theirs: dict[str, Any] | None, ours: dict[str, Any] | None) -> str:
    """Both model configs, as the keys where they differ (all 30 keys would hide the cause)."""
    if theirs is None or ours is None:
        return ""
    diff = [f"{key} {theirs.get(key)!r} vs {value!r}" for key, value in ours.items() if theirs.get(key) != value]
    if not diff:
        return (
            "; the file's model_params are this model's config, so they do not describe its "
            "state_dict (edited, or written by other code): re-export the weights with save_weights"
        )
    return f"; model config of the file vs this model: {', '.join(diff)}"
