"""The models a training starts from: ``train.pretrained`` (used as it is) and ``train.init_from``
(fine-tuned). Each is resolved from its reference, pinned by its sha256, and must be the model the
``model`` section describes, so that what MLflow records and what ``prepare`` computes are true."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..paths import project_root
from ..weights.resolve import ResolvedModel, resolve_pinned


def given_model(params: dict[str, Any], key: str) -> ResolvedModel:
    """``train.pretrained`` or ``train.init_from``: the model, its file's hash checked against
    ``train.<key>_sha256`` (required for a file), and the model section checked against it."""
    t = params["train"]
    given = resolve_pinned(t[key], t[f"{key}_sha256"], project_root(), f"train.{key}")
    check_same_model(params["model"], given.model.params, given.reference, f"train.{key}")
    return given


def check_same_model(ours: dict[str, Any], theirs: dict[str, Any], source: str, what: str = "train.pretrained") -> None:
    """The ``model`` section must describe the given model, so that the params MLflow records,
    the STFT that ``prepare`` computes and everything downstream are truthful."""
    differences = {key: value for key, value in theirs.items() if ours.get(key) != value}
    if differences:
        listing = "; ".join(f"model.{k} is {ours.get(k)!r}, the model has {v!r}" for k, v in differences.items())
        sets = " ".join(f"-S model.{k}={json.dumps(v)}" for k, v in differences.items())
        raise ConfigError(
            f"{what} = {source}: the model section does not describe this model: {listing}. "
            f"Set these in params.yaml (or: dvc exp run {sets})"
        )


def source_file(source: ResolvedModel) -> Path | None:
    """The file a source was given as (None for a published name): where its MLflow record may lie."""
    return None if source.published == source.reference else project_root() / Path(source.reference).expanduser()


def source_tags(source: ResolvedModel, key: str) -> dict[str, str]:
    return {key: source.reference, f"{key}_sha256": source.sha256, f"{key}_verified": source.verified}
