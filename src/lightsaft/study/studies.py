"""Studies: a YAML grid of params, run as DVC experiments (the demo is a one-point study).

A study file holds ``set`` (overrides for every point), an optional ``base`` (another study file
whose ``set`` comes first, and whose grid, seeds and points it takes when it lists none of its
own), a ``grid`` (key -> list of values), ``seeds`` (-> ``train.seed``) and ``points`` (explicit
points, each ``{name, set}`` with overrides of its own; beside a grid, or instead of it).
Each point becomes one ``dvc exp run`` with ``-S key=value`` overrides, so it reuses whatever
DVC already has cached (download, prepare) and lands in ``dvc exp show`` and MLflow.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import defaults, validate
from ..errors import ConfigError
from ..schema import read_yaml, set_dotted


@dataclass(frozen=True)
class Point:
    name: str
    overrides: dict[str, Any]


@dataclass
class Study:
    name: str
    path: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)
    explicit: list[Point] = field(default_factory=list)  # ``points:``, named after the study

    def points(self) -> list[Point]:
        """The grid's points (one point when there is neither grid nor explicit points), then the explicit ones."""
        keys = list(self.grid)
        seeds = self.seeds or [None]
        out = []
        grid = itertools.product(*(self.grid[k] for k in keys)) if self.grid or not self.explicit else []
        for values in grid:
            for seed in seeds:
                overrides = {**self.overrides, **dict(zip(keys, values))}
                label = [f"{k.split('.')[-1].replace('_', '')}{_short(v)}" for k, v in zip(keys, values)]
                if seed is not None:
                    overrides["train.seed"] = seed
                    label.append(f"s{seed}")
                out.append(Point("-".join([self.name, *label]), overrides))
        for point in self.explicit:
            for seed in seeds:
                overrides = {**self.overrides, **point.overrides}
                suffix = []
                if seed is not None:
                    overrides["train.seed"] = seed
                    suffix.append(f"s{seed}")
                out.append(Point("-".join([self.name, point.name, *suffix]), overrides))
        return out


def _short(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "", str(value)).lower() or "x"


def load_study(path: str | Path, extra: dict[str, Any] | None = None) -> Study:
    """Read a study file; every point is validated against the params schema up front."""
    path = Path(path)
    raw = read_yaml(path) or {}
    unknown = set(raw) - {"study", "description", "base", "set", "grid", "seeds", "points"}
    if unknown:
        raise ConfigError(
            f"{path}: unknown key(s) {sorted(unknown)}; a study has study, description, base, set, grid, seeds, points"
        )
    overrides: dict[str, Any] = {}
    base = load_study(path.parent / raw["base"]) if raw.get("base") else None
    if base is not None:
        overrides.update(base.overrides)
    inherit = base is not None and not any(raw.get(key) for key in ("grid", "seeds", "points"))
    overrides.update(raw.get("set") or {})
    overrides.update(extra or {})
    name = raw.get("study") or path.stem
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
        raise ConfigError(f"{path}: study name {name!r} must be letters, digits, '-' or '_'")
    grid = base.grid if inherit else raw.get("grid") or {}
    if not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError(f"{path}: every grid entry must be a non-empty list of values")
    if inherit:  # the base's points, with this file's settings
        study = Study(name, path, overrides, grid, base.seeds, base.explicit)
    else:
        study = Study(name, path, overrides, grid, list(raw.get("seeds") or []), _explicit(path, raw.get("points")))
    for point in study.points():
        params = defaults()
        try:
            for key, value in point.overrides.items():
                set_dotted(params, key, value)
            validate(params, where=f"{path} (point {point.name})")
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    return study


def _explicit(path: Path, points: Any) -> list[Point]:
    """``points: [{name: ..., set: {key: value}}, ...]``: each named, its overrides its own."""
    if points is None:
        return []
    if not isinstance(points, list):
        raise ConfigError(f"{path}: points must be a list of {{name: ..., set: {{key: value, ...}}}}")
    out = []
    for i, point in enumerate(points):
        if not isinstance(point, dict) or set(point) - {"name", "set"} or not isinstance(point.get("set"), dict):
            raise ConfigError(f"{path}: points[{i}] must be {{name: ..., set: {{key: value, ...}}}}, got {point!r}")
        name = str(point.get("name", ""))
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
            raise ConfigError(f"{path}: points[{i}].name {name!r} must be letters, digits, '-' or '_'")
        out.append(Point(name, dict(point["set"])))
    names = [p.name for p in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: point names repeat: {names}")
    return out
