"""Studies: a YAML grid of params, run as DVC experiments (the demo is a one-point study).

A study file holds ``set`` (overrides for every point), an optional ``base`` (another study file
whose ``set`` comes first, and whose grid, seeds, points and reference it takes when it lists no
grid, seeds or points of its own), a ``grid`` (key -> list of values), ``seeds`` (-> ``train.seed``),
``points`` (explicit points, each ``{name, set}`` with overrides of its own; beside a grid, or
instead of it) and ``reference`` (the point the comparison measures the others against: grid
values such as ``{model.dk: 32}``, an explicit point's name, or a point's label such as
``dk=32, num_tdfs=4``; default: the first point).
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
    """One experiment: ``name`` (the DVC experiment), its ``overrides``; ``label`` names the study
    point it is a seed of (``dk=32, num_tdfs=4``, or an explicit point's name), ``seed`` its seed."""

    name: str
    overrides: dict[str, Any]
    label: str = ""
    seed: int | None = None


@dataclass
class Study:
    name: str
    path: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)
    explicit: list[Point] = field(default_factory=list)  # ``points:``, named after the study
    reference: str | None = None  # the label of the reference point (None: the first point)

    def points(self) -> list[Point]:
        """The grid's points (one point when there is neither grid nor explicit points), then the explicit ones."""
        keys = list(self.grid)
        seeds = self.seeds or [None]
        out = []
        grid = itertools.product(*(self.grid[k] for k in keys)) if self.grid or not self.explicit else []
        for values in grid:
            label = grid_label(dict(zip(keys, values))) or self.name
            for seed in seeds:
                overrides = {**self.overrides, **dict(zip(keys, values))}
                name = [f"{k.split('.')[-1].replace('_', '')}{_short(v)}" for k, v in zip(keys, values)]
                if seed is not None:
                    overrides["train.seed"] = seed
                    name.append(f"s{seed}")
                out.append(Point("-".join([self.name, *name]), overrides, label, seed))
        for point in self.explicit:
            for seed in seeds:
                overrides = {**self.overrides, **point.overrides}
                suffix = []
                if seed is not None:
                    overrides["train.seed"] = seed
                    suffix.append(f"s{seed}")
                out.append(Point("-".join([self.name, point.name, *suffix]), overrides, point.name, seed))
        return out

    def labels(self) -> list[str]:
        """The study points (a point's seeds share its label), in the study's order."""
        return list(dict.fromkeys(p.label for p in self.points()))

    def grid_values(self, label: str) -> dict[str, Any]:
        """The grid values of a point, as the study file gives them ({} for an explicit point)."""
        point = next(p for p in self.points() if p.label == label)
        return {k: point.overrides[k] for k in self.grid} if label not in {p.name for p in self.explicit} else {}


def display(value: Any) -> str:
    """A param value as the study file spells it: 32, 0.001, true, null (not 32.000)."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return str(value)


def grid_label(values: dict[str, Any]) -> str:
    """``dk=32, num_tdfs=4``: each grid key by its last part (whole, where two would read alike)."""
    short = [k.split(".")[-1] for k in values]
    names = [s if short.count(s) == 1 else k for s, k in zip(short, values)]
    return ", ".join(f"{n}={display(v)}" for n, v in zip(names, values.values()))


def _short(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "", str(value)).lower() or "x"


def load_study(path: str | Path, extra: dict[str, Any] | None = None) -> Study:
    """Read a study file; every point is validated against the params schema up front."""
    path = Path(path)
    raw = read_yaml(path) or {}
    unknown = set(raw) - {"study", "description", "base", "set", "grid", "seeds", "points", "reference"}
    if unknown:
        raise ConfigError(
            f"{path}: unknown key(s) {sorted(unknown)}; a study has study, description, base, set, grid, seeds, "
            "points, reference"
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
    given = raw.get("reference")
    study.reference = base.reference if given is None and inherit else _reference(path, given, study)
    return study


def _reference(path: Path, given: Any, study: Study) -> str | None:
    """``reference:`` as the label of exactly one point: grid values (a mapping of grid keys), an
    explicit point's name, or a label."""
    if given is None:
        return None
    labels = study.labels()
    listed = "; ".join(labels)
    if isinstance(given, dict):
        if not given or any(k not in study.grid for k in given):
            keys = ", ".join(study.grid) or "none: this study has no grid"
            raise ConfigError(
                f"{path}: reference {given!r}: name grid keys with their values (grid keys: {keys}), or a point's name"
            )
        matches = [
            label
            for label in labels
            if (values := study.grid_values(label)) and all(values[k] == v for k, v in given.items())
        ]
    elif isinstance(given, str):
        matches = [given] if given in labels else []
    else:
        matches = []
    if len(matches) != 1:
        why = "matches no point" if not matches else f"matches {len(matches)} points (give every grid key)"
        raise ConfigError(f"{path}: reference {given!r} {why}; the points are: {listed}")
    return matches[0]


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
