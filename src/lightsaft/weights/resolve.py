"""One path from a model reference to a loaded model, for every place that takes one.

``train.pretrained``, ``lightsaft separate --model`` and the song page all name a model the same
ways: a published name (``lasaft_large_2021``), an official checkpoint (``.ckpt``), our weights
file (``models/weights.pt``), or by the names of :mod:`lightsaft.weights.references`: a DVC
experiment, an MLflow run, logged model or registered model. :func:`resolve_model` turns any of
them into the model, together with its identity (the sha256 of the file it came from, hashed
once) and how that was verified. Official checkpoints are imported once into
``.lightsaft/pretrained/`` and reused from there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, WeightsError
from ..model.unet import Separator
from ..paths import file_sha256
from .ours import load_weights, source_sha256
from .published import PUBLISHED, default_out, fetch_published, identified, published_name, write_import
from .references import locate


@dataclass(frozen=True)
class ResolvedModel:
    """A model and where it came from."""

    model: Separator
    reference: str  # as the user gave it
    name: str  # short and file-system safe: the published, experiment or model name, or the file's stem
    sha256: str  # of the file the model comes from (the official checkpoint, or our weights file)
    verified: str  # how that hash was checked (or why it was not)
    weights: Path  # our weights file of it (an official checkpoint's imported copy)
    published: str | None = None  # the published model it is, when known


def resolve_model(
    reference: str | Path, base: str | Path = ".", sha256: str | None = None, what: str = "--model"
) -> ResolvedModel:
    """The model ``reference`` names; relative paths are relative to ``base``. ``sha256`` pins the
    file's hash (a mismatch is refused, nothing imported). ``what`` names where the reference was
    given, in errors (``train.pretrained``, ``--model``)."""
    if sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise WeightsError(f"sha256 {sha256!r}: expected 64 lowercase hexadecimal digits")
    text = str(reference)
    named = locate(text, Path(base), what)  # a DVC experiment or MLflow model (weights/references.py), or None
    if named is None and text in PUBLISHED:
        return _published(text, sha256)
    path = named.weights if named else Path(reference).expanduser()
    path = path if path.is_absolute() else Path(base) / path
    if not path.is_file():
        raise FileNotFoundError(
            f"{what} = {text!r}: no such file, DVC experiment or MLflow model, and not a published name "
            f"({', '.join(PUBLISHED)}); give our weights file (models/weights.pt), an official .ckpt, a published "
            f"name, a DVC experiment name (dvc exp show), an MLflow run id (runs:/<id>), models:/<model id>, "
            f"or a registered model models:/<name>/<version> or models:/<name>@<alias>"
        )
    actual = file_sha256(path)
    if sha256 is not None and actual != sha256:
        raise WeightsError(f"{path}: sha256 {actual} differs from the pinned {sha256}; nothing loaded")
    verified = "pinned sha256 verified" if sha256 else named.verified if named else identified(actual)
    weights = path
    if path.suffix == ".ckpt":  # official: imported once per content
        weights = default_out(path, actual)
        if not weights.is_file():
            print(write_import(path, weights, text, actual, verified).summary())
    model = load_weights(weights)
    published = published_name(actual) or published_name(source_sha256(weights))  # the .ckpt, or an import of it
    name = named.name if named else _safe_name(path.stem)
    return ResolvedModel(model, text, name, actual, verified, weights, published)


# --- issue 23: sources whose identity the params must fix (train.pretrained, train.init_from) ---
def resolve_pinned(reference: str, sha256: str | None, base: str | Path, what: str) -> ResolvedModel:
    """:func:`resolve_model` for a model that is part of a result's identity: DVC sees only the
    reference, so a file's content must be pinned in params (``<what>_sha256``). A published name
    pins its own (the authors' hash, :data:`~lightsaft.weights.published.PUBLISHED`)."""
    if sha256 is None and reference not in PUBLISHED:
        path = Path(reference).expanduser()
        path = path if path.is_absolute() else Path(base) / path
        if path.is_file():
            raise ConfigError(
                f"{what} = {reference!r} is a file: set {what}_sha256 to its sha256 ({file_sha256(path)} now), "
                f"so that the training's identity changes with the file (DVC sees only the path)"
            )
    return resolve_model(reference, base, sha256, what)


# --- end issue 23 ---


def _published(name: str, sha256: str | None) -> ResolvedModel:
    """A published model: downloaded, verified and imported on first use; afterwards its imported
    copy, whose source was verified when it was made (and which names that source's hash)."""
    weights = default_out(name, "")
    known = PUBLISHED[name].sha256
    if weights.is_file() and sha256 in (None, known) and source_sha256(weights) == known:
        return ResolvedModel(load_weights(weights), name, name, known, "verified when imported", weights, name)
    path, actual, verified = fetch_published(name, sha256)
    print(write_import(path, weights, name, actual, verified).summary())
    return ResolvedModel(load_weights(weights), name, name, actual, verified, weights, name)


def _safe_name(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "model"
