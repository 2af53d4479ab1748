"""params.yaml: the sections, composed from their owners, and validation, at the edge.

Each part of the pipeline declares its section (``data/params.py``, ``model/params.py``,
``training/params.py``, ``separation/params.py``, ``evaluation/params.py``, ``report/params.py``,
``tracking/params.py``) with the kit of :mod:`lightsaft.schema`; this module only puts them
together. Every stage and command validates the whole params file before anything runs: keys,
types, ranges and every rule between keys (protocol-specific ranges included), so a typo in
``dvc exp run -S model.dkk=32`` or an impossible combination fails at once, naming the keys.
Downstream code trusts what it is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .data.params import DATA, PREPARE, RUNTIME_PREPARE
from .errors import ConfigError
from .evaluation.params import EVALUATE, RUNTIME_EVALUATE
from .model.params import MODEL
from .report.params import REPORT
from .schema import RECORDING, RESULT, RUNTIME, Section, read_yaml
from .separation.params import RUNTIME_SEPARATE, SEPARATE
from .tracking.params import MLFLOW
from .training.params import RUNTIME_TRAIN, TRAIN, TRAINER

# In params.yaml's order: the result sections by stage, the recording one, then runtime.
SECTIONS: tuple[Section, ...] = (
    DATA,
    PREPARE,
    MODEL,
    TRAIN,
    TRAINER,
    SEPARATE,
    EVALUATE,
    REPORT,
    MLFLOW,
    RUNTIME_PREPARE,
    RUNTIME_TRAIN,
    RUNTIME_SEPARATE,
    RUNTIME_EVALUATE,
)
BY_NAME = {s.name: s for s in SECTIONS}


def sections(kind: str) -> tuple[Section, ...]:
    """The sections of one kind: ``schema.RESULT``, ``RUNTIME`` or ``RECORDING``."""
    return tuple(s for s in SECTIONS if s.kind == kind)


def result_sections() -> tuple[str, ...]:
    return tuple(s.name for s in sections(RESULT))


def top_level() -> dict[str, tuple[str, ...]]:
    """params.yaml's top-level keys -> the sections under each (``runtime`` -> its stages)."""
    tops: dict[str, tuple[str, ...]] = {}
    for s in SECTIONS:
        top = s.name.split(".")[0]
        tops[top] = (*tops.get(top, ()), s.name)
    return tops


def _nested(values: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, section in values.items():
        *parents, last = name.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = section
    return out


def defaults() -> dict[str, Any]:
    return _nested({s.name: s.defaults() for s in SECTIONS})


def validate(params: Mapping[str, Any], where: str = "params") -> dict[str, Any]:
    """Validate a whole params mapping: every section (defaults filled in), then the rules across
    sections. Unknown keys are errors that list the valid ones."""
    if not isinstance(params, Mapping):
        raise ConfigError(f"{where}: the file must be a mapping of keys, got {type(params).__name__}")
    tops = top_level()
    unknown = [k for k in params if k not in tops]
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]}; valid keys under the top level: {', '.join(tops)}")
    for top, names in tops.items():
        inner = params.get(top)
        if len(names) > 1 and isinstance(inner, Mapping):
            stages = [n.split(".", 1)[1] for n in names]
            if bad := [k for k in inner if k not in stages]:
                raise ConfigError(f"{where}: unknown key {top}.{bad[0]}; valid keys under {top}: {', '.join(stages)}")
    out = {}
    for s in SECTIONS:
        raw: Any = params
        for part in s.name.split("."):
            raw = raw.get(part) if isinstance(raw, Mapping) else None
        out[s.name] = s.validate(raw, where)
    nested = _nested(out)
    for s in SECTIONS:
        for rule in s.cross_rules:
            try:
                rule(nested)
            except ConfigError as e:
                raise ConfigError(f"{where}: {e}") from None
    return nested


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read and validate a params file; returns every section with defaults filled in."""
    return validate(read_yaml(path) or {}, where=str(path))


__all__ = ["RECORDING", "RESULT", "RUNTIME", "SECTIONS", "defaults", "load_params", "result_sections", "validate"]
