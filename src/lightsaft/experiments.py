"""Studies: a YAML grid of params, run as DVC experiments (the demo is a one-point study).

A study file holds ``set`` (overrides for every point), an optional ``base`` (another study file
whose ``set`` comes first), a ``grid`` (key -> list of values), ``seeds`` (-> ``train.seed``) and
``points`` (explicit points, each ``{name, set}`` with overrides of its own; beside a grid, or
instead of it).
Each point becomes one ``dvc exp run`` with ``-S key=value`` overrides, so it reuses whatever
DVC already has cached (download, prepare) and lands in ``dvc exp show`` and MLflow.
"""

from __future__ import annotations

import itertools
import json
import os
import pty
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError, defaults, read_yaml, validate
from .errors import LightSAFTError, redact

QUEUE_POLL_S = 5.0
STALL_RESTART_S = 60.0


class ExperimentError(LightSAFTError):
    """A DVC experiment command failed."""


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


def set_dotted(params: dict[str, Any], key: str, value: Any) -> None:
    node = params
    *parents, last = key.split(".")
    for part in parents:
        if not isinstance(node.get(part), dict):
            raise ConfigError(f"unknown key {key}: {part!r} is not a section")
        node = node[part]
    if last not in node:
        raise ConfigError(f"unknown key {key}; valid keys there: {', '.join(node)}")
    node[last] = value


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
    if raw.get("base"):
        overrides.update(load_study(path.parent / raw["base"]).overrides)
    overrides.update(raw.get("set") or {})
    overrides.update(extra or {})
    name = raw.get("study") or path.stem
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
        raise ConfigError(f"{path}: study name {name!r} must be letters, digits, '-' or '_'")
    grid = raw.get("grid") or {}
    if not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError(f"{path}: every grid entry must be a non-empty list of values")
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


# ---------------------------------------------------------------------------------------
def _dvc(repo: Path, *args: str, check: bool = True, capture: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=capture, text=True)
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout or "").strip()[-2000:] if capture else ""
        raise ExperimentError(f"dvc {' '.join(args[:3])} ... failed (exit {result.returncode}). {detail}")
    return result


def _set_args(overrides: dict[str, Any]) -> list[str]:
    args = []
    for key, value in overrides.items():
        args += ["-S", f"{key}={json.dumps(value)}"]  # JSON is YAML: "32" stays a string
    return args


def experiment_refs(repo: Path) -> dict[str, str]:
    """Experiment name -> git ref, for every finished DVC experiment in the repo."""
    out = subprocess.run(
        ["git", "for-each-ref", "--format=%(refname)", "refs/exps/"], cwd=repo, capture_output=True, text=True
    ).stdout.split()
    return {ref.rsplit("/", 1)[-1]: ref for ref in out if ref.count("/") >= 4}


def read_from_experiment(repo: Path, ref: str, path: str) -> Any:
    """A git-tracked file (metrics, params, run record) as committed in an experiment."""
    result = subprocess.run(["git", "show", f"{ref}:{path}"], cwd=repo, capture_output=True, text=True)
    if result.returncode != 0:
        return None
    return json.loads(result.stdout) if path.endswith(".json") else yaml.safe_load(result.stdout)


# DVC fills an experiment's temporary copy with the outputs dvc.lock records, and warns for each
# one it has no copy of: on a first run, every output. Nothing is wrong (the stage then runs and
# makes it), so the demo keeps these lines from the user.
HARMLESS = re.compile(r"WARNING: No file hash info found for '.*'\. It won't be created\.")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # colours: DVC writes WARNING in yellow on a terminal


def run_foreground(repo: Path, point: Point) -> int:
    """One experiment in a temporary copy, its output streamed to the terminal (the demo)."""
    args = ["exp", "run", "--temp", "-n", point.name, *_set_args(point.overrides)]
    print(redact(f"$ dvc {' '.join(args)}"), flush=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return stream_filtered([sys.executable, "-m", "dvc", *args], repo, env, HARMLESS)


def stream_filtered(cmd: list[str], cwd: Path, env: dict[str, str], drop: re.Pattern) -> int:
    """Run ``cmd`` with its output passed through, less the lines ``drop`` matches. On a terminal the
    command gets a pseudo-terminal of its own, so that its progress bars still draw."""
    terminal = sys.stdout.isatty()
    master, slave = pty.openpty() if terminal else os.pipe()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    pending = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # a pseudo-terminal whose other side closed
            chunk = b""
        if not chunk:
            break
        pending += chunk
        *lines, pending = re.split(rb"(?<=\n)|(?<=\r)(?=[^\r\n])", pending)  # ends at \n, \r\n, \r\r\n or \r
        kept = b"".join(line for line in lines if not drop.search(ANSI.sub("", line.decode(errors="replace"))))
        sys.stdout.buffer.write(kept)
        sys.stdout.flush()
    sys.stdout.buffer.write(pending)
    os.close(master)
    return proc.wait()


def queue_status(repo: Path) -> tuple[dict[str, str], int]:
    """``dvc queue status`` parsed: name -> status, and the number of active workers."""
    text = _dvc(repo, "queue", "status", check=False).stdout
    statuses, workers = {}, 0
    for line in text.splitlines():
        cols = line.split()
        if line.startswith("Worker status:"):
            workers = int(re.search(r"(\d+) active", line).group(1))
        elif len(cols) >= 4 and cols[0] != "Task":
            statuses[cols[1]] = cols[-1]
    return statuses, workers


def run_queue(repo: Path, points: list[Point], jobs: int, log_dir: Path) -> dict[str, str]:
    """Queue the points that have no finished experiment yet, run them with ``jobs`` workers,
    and return name -> Success/Failed/Skipped, with each point's log under ``log_dir``."""
    done = experiment_refs(repo)
    results = {p.name: "Skipped (already done)" for p in points if p.name in done}
    todo = [p for p in points if p.name not in done]
    for point in todo:
        _dvc(repo, "queue", "remove", point.name, check=False)  # a failed earlier try of this point
        _dvc(repo, "exp", "run", "--queue", "-n", point.name, *_set_args(point.overrides))
        print(f"queued {point.name}", flush=True)
    if todo:
        _dvc(repo, "queue", "start", "-j", str(jobs))
    pending, idle_since = {p.name for p in todo}, time.monotonic()
    while pending:
        time.sleep(QUEUE_POLL_S)
        statuses, workers = queue_status(repo)
        for name in sorted(pending):
            if statuses.get(name) in ("Success", "Failed"):
                pending.discard(name)
                results[name] = statuses[name]
                print(f"{name}: {statuses[name]}", flush=True)
            elif name not in statuses:
                pending.discard(name)
                results[name] = "Success" if name in experiment_refs(repo) else "Failed (lost by the queue)"
        if pending and workers == 0:
            if time.monotonic() - idle_since > STALL_RESTART_S:  # DVC's workers can stop early
                print("queue stalled with tasks left; restarting workers", flush=True)
                _dvc(repo, "queue", "start", "-j", str(jobs), check=False)
                idle_since = time.monotonic()
        else:
            idle_since = time.monotonic()
    log_dir.mkdir(parents=True, exist_ok=True)
    for point in todo:
        log = _dvc(repo, "queue", "logs", point.name, check=False)
        (log_dir / f"{point.name}.log").write_text(log.stdout + log.stderr)
    return results
