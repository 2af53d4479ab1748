"""The kit every params section is written with: value checks, sections, rules, dotted keys, YAML.

Each part of the pipeline declares its own section of ``params.yaml`` (``model/params.py``,
``training/params.py``, ...) with this kit; :mod:`lightsaft.config` composes them. A section says
for every key its default and its check, the rules between its keys, and its kind:

- ``result``: changes results; the stages that read it depend on it in dvc.yaml (a change reruns
  them), and it is part of a training's fingerprint and MLflow params;
- ``runtime``: only changes how a run executes (workers, devices, resuming), under ``runtime.<stage>``;
  DVC does not track it, so changing it never reruns anything;
- ``recording``: only changes where and how a run is recorded (the MLflow experiment); in no stage's
  DVC params and no fingerprint, handed to the stages that record.

Checks return None when a value is fine, else the reason it is not; errors name the dotted key.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

RESULT, RUNTIME, RECORDING = "result", "runtime", "recording"

Check = Callable[[Any], str | None]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def integer(lo: int | None = None, hi: int | None = None, nullable: bool = False, why: str = "") -> Check:
    def check(v):
        if v is None and nullable:
            return None
        if not _is_int(v):
            return "expected an integer" + (" or null" if nullable else "")
        if lo is not None and v < lo:
            return f"must be >= {lo}{why}"
        if hi is not None and v > hi:
            return f"must be <= {hi}"
        return None

    return check


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False, nullable: bool = False) -> Check:
    def check(v):
        if v is None and nullable:
            return None
        if isinstance(v, str):
            return f"expected a number, got the text {v!r}"
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return "expected a finite number" + (" or null" if nullable else "")
        if lo is not None and (v <= lo if lo_open else v < lo):
            return f"must be {'>' if lo_open else '>='} {lo}"
        if hi is not None and v > hi:
            return f"must be <= {hi}"
        return None

    return check


def boolean() -> Check:
    return lambda v: None if isinstance(v, bool) else "expected true or false"


def choice(*options: Any) -> Check:
    def check(v):
        return None if v in options else f"must be one of {', '.join(map(repr, options))}"

    return check


def text(nullable: bool = False, pattern: str | None = None, hint: str = "") -> Check:
    def check(v):
        if v is None and nullable:
            return None
        if not isinstance(v, str) or not v:
            return "expected a non-empty string" + (" or null" if nullable else "")
        if pattern and not re.fullmatch(pattern, v):
            return hint or f"must match {pattern}"
        return None

    return check


def sha256(nullable: bool = True) -> Check:
    return text(nullable=nullable, pattern=r"[0-9a-f]{64}", hint="must be 64 lowercase hex digits")


def device_name() -> Check:
    """A torch device as the user names it: auto (CUDA when available), cpu, cuda, cuda:N or mps."""
    return text(pattern=r"auto|cpu|cuda(:\d+)?|mps", hint="expected auto, cpu, cuda, cuda:N or mps")


def list_of(item: Check, nullable: bool = True) -> Check:
    def check(v):
        if v is None and nullable:
            return None
        if not isinstance(v, list):
            return "expected a list" + (" or null" if nullable else "")
        for x in v:
            if (reason := item(x)) is not None:
                return f"item {x!r}: {reason}"
        return None

    return check


def one_of(*checks: Check, hint: str) -> Check:
    return lambda v: None if any(c(v) is None for c in checks) else hint


def registry(names: Iterable[str], **implementations: Any) -> dict[str, Any]:
    """The implementations of a section's named choices (losses, engines, ...), keyed by the names
    the section declares: a name without an implementation, or the reverse, fails at import, so
    the light section (validated without importing torch) and the code cannot drift apart."""
    names = tuple(names)
    if set(names) != set(implementations):
        raise RuntimeError(f"registry {sorted(implementations)} does not implement the declared choices {names}")
    return {name: implementations[name] for name in names}


# ---------------------------------------------------------------------------------------
# Sections
Keys = Mapping[str, Any]  # key -> (default, check), or a nested Keys mapping (a sub-section)
Rule = Callable[[Mapping[str, Any]], None]  # raises ConfigError naming the keys


@dataclass(frozen=True)
class Section:
    """One section of params.yaml as its owner declares it.

    ``name``: its dotted place (``model``, ``runtime.train``). ``rules``: checks between its own
    keys, given the section's validated values (they also run on a section read from a file, such
    as the model params of a weights file). ``cross_rules``: checks that need other sections too,
    given all validated params.
    """

    name: str
    keys: Keys
    kind: str = RESULT
    rules: tuple[Rule, ...] = ()
    cross_rules: tuple[Rule, ...] = ()

    def defaults(self) -> dict[str, Any]:
        return _defaults(self.keys)

    def validate(self, values: Any, where: str = "params", label: Callable[[str], str] | None = None) -> dict[str, Any]:
        """``values`` with defaults filled in, every key and rule checked. ``label`` names a key in
        messages (default: the dotted key; the CLI passes its option names)."""
        label = label or (lambda key: f"{self.name}.{key}")
        out = validate_keys(values, self.keys, label, where, self.name)
        for rule in self.rules:
            _apply(rule, out, where)
        return out


def _defaults(keys: Keys) -> dict[str, Any]:
    return {k: _defaults(spec) if isinstance(spec, Mapping) else spec[0] for k, spec in keys.items()}


def _apply(rule: Rule, values: Mapping[str, Any], where: str) -> None:
    try:
        rule(values)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def validate_keys(values: Any, keys: Keys, label: Callable[[str], str], where: str, name: str) -> dict[str, Any]:
    """Check every key of ``values`` against ``keys`` (nested mappings are sub-sections)."""
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: {name or 'the file'} must be a mapping of keys, got {type(values).__name__}")
    unknown = [k for k in values if k not in keys]
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {label(unknown[0])}; valid keys under {name or 'the top level'}: {', '.join(keys)}"
        )
    out: dict[str, Any] = {}
    for key, spec in keys.items():
        if isinstance(spec, Mapping):
            out[key] = validate_keys(values.get(key), spec, lambda k, p=key: label(f"{p}.{k}"), where, f"{name}.{key}")
            continue
        default, check = spec
        value = values.get(key, default)
        if (reason := check(value)) is not None:
            raise ConfigError(f"{where}: {label(key)} = {value!r}: {reason}")
        out[key] = value
    return out


def fail(key: str, value: Any, why: str) -> None:
    """Raise the error a rule reports: the key, its value, and what is wrong with it."""
    raise ConfigError(f"{key} = {value!r}: {why}")


# ---------------------------------------------------------------------------------------
# Dotted keys
def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"dk": 64}}`` -> ``{"model.dk": 64}`` (MLflow params, tables)."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def set_dotted(params: dict[str, Any], key: str, value: Any) -> None:
    """``set_dotted(p, "model.dk", 32)``; an unknown key is an error naming the valid ones."""
    node = params
    *parents, last = key.split(".")
    for part in parents:
        if not isinstance(node.get(part), dict):
            raise ConfigError(f"unknown key {key}: {part!r} is not a section")
        node = node[part]
    if last not in node:
        raise ConfigError(f"unknown key {key}; valid keys there: {', '.join(node)}")
    node[last] = value


def get_dotted(params: Mapping[str, Any], key: str) -> Any:
    node: Any = params
    for part in key.split("."):
        node = node[part]
    return node


# ---------------------------------------------------------------------------------------
# YAML
class _Loader(yaml.SafeLoader):
    """YAML 1.2 floats: ``1e-4`` is a number (DVC's ``-S`` writes it that way), not text."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+][0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file, naming the file in any error."""
    path = Path(path)
    try:
        with open(path) as f:
            return yaml.load(f, Loader=_Loader)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as e:  # on one line: where, what, and in which construct
        mark, context = getattr(e, "problem_mark", None), getattr(e, "context", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            f"{path}: not valid YAML{where}: {getattr(e, 'problem', None) or e}{f' ({context})' if context else ''}"
        ) from None


def parse_value(text: str) -> Any:
    """A ``--set key=value`` value as YAML 1.2 (numbers, booleans, null, lists)."""
    return yaml.load(text, Loader=_Loader)
