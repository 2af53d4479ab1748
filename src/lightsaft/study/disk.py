"""The disk a study will take, projected from its points' params before anything is queued.

Per distinct prepare input (the ``data`` and ``prepare`` params, the STFT, whether only the test
tracks are needed) one spectrogram cache; then per point what stays in the DVC cache: the test
set's estimates (16-bit FLAC), the weights and the Lightning checkpoint, the report's excerpts;
and, while a point trains, its working checkpoints (the best k, the last and the interrupted one),
removed when it ends. Track lengths come from what the workspace has already prepared or
downloaded, else from the data set's documented lengths. Figures from ``benchmarks/disk.py``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import validate
from ..errors import LightSAFTError
from ..schema import set_dotted
from .studies import Point

SAMPLE_RATE = 44100
TARGETS = 4
# Measured by benchmarks/disk.py on the real MUSDB18 excerpts of ../shared/musdb separated by a
# trained demo model: FLAC keeps 16-bit estimates at this share of their 4 bytes per stereo sample.
FLAC_BYTES_PER_SECOND = 2 * 2 * SAMPLE_RATE * 0.72  # per stereo estimate; 16-bit PCM is 176,400
WEIGHTS_BYTES_PER_PARAMETER = 4.0  # float32 tensors; torch.save adds a few kB
CHECKPOINT_BYTES_PER_PARAMETER = 12.0  # weights and Adam's two moments, float32
REPORT_BYTES_PER_SECOND = 5 * 320_000 / 8  # five excerpts per track at mp3's highest bitrate (an upper bound)
# MUSDB18 and MUSDB18-HQ as published (150 tracks, about 10 h): seconds per split, used only when
# the workspace has neither a prepared cache nor a downloaded track list to measure.
MUSDB18_SECONDS = {"train": 5.8 * 3600, "valid": 0.8 * 3600, "test": 3.5 * 3600}
MUSDB18_TRACKS = {"train": 86, "valid": 14, "test": 50}


class DiskError(LightSAFTError, RuntimeError):
    """The study would not fit on the disk that holds the DVC cache."""


@dataclass
class Projection:
    """Bytes a study adds: ``caches`` per prepare input, ``points`` per point (estimates, weights,
    report), ``working`` the largest training working set (one training at a time per GPU)."""

    caches: dict[str, int] = field(default_factory=dict)
    points: dict[str, dict[str, int]] = field(default_factory=dict)
    working: int = 0
    source: str = ""  # where the track lengths came from

    @property
    def total(self) -> int:
        return sum(self.caches.values()) + sum(sum(p.values()) for p in self.points.values()) + self.working

    def table(self) -> str:
        """A few lines: each cache, the points' range per part, the working set, the total."""
        lines = [f"projected disk (track lengths from {self.source}):"]
        for key, size in self.caches.items():
            lines.append(f"  data cache {key}: {_gb(size)}")
        if self.points:
            sizes = [sum(p.values()) for p in self.points.values()]
            parts = {part: [p[part] for p in self.points.values()] for part in next(iter(self.points.values()))}
            detail = ", ".join(f"{part} {_span(values)}" for part, values in parts.items())
            lines.append(f"  {len(self.points)} point(s): {_span(sizes)} each ({detail})")
        if self.working:
            lines.append(f"  while a point trains, its working checkpoints: up to {_gb(self.working)}")
        lines.append(f"  total: {_gb(self.total)}")
        return "\n".join(lines)


def _span(values: list[int]) -> str:
    low, high = min(values), max(values)
    return _gb(low) if round(low / 1e7) == round(high / 1e7) else f"{low / 1e9:,.2f}-{_gb(high)}"


def _gb(size: float) -> str:
    return f"{size / 1e9:,.2f} GB"


def project(repo: Path, points: list[Point], done: set[str] = frozenset()) -> Projection:
    """The disk of the ``points`` not ``done`` yet, as they would run in ``repo``."""
    import torch

    from ..model.unet import build_model, count_parameters
    from ..prepare import cache_bytes

    base = _workspace_params(repo)
    present = _prepared_input(repo)
    out = Projection()
    for point in points:
        if point.name in done:
            continue
        params = _point_params(base, point)
        tracks, out.source = track_lengths(repo, params["data"])
        m = params["model"]
        splits = ("test",) if params["train"]["pretrained"] else ("train", "valid", "test")
        key = json.dumps([params["data"], params["prepare"], m["n_fft"], m["hop_length"], splits], sort_keys=True)
        if key not in out.caches:
            out.caches[key] = 0 if key == present else sum(
                cache_bytes(t, n, m["n_fft"], m["hop_length"], params["prepare"]["dtype"])
                for t, n in tracks if t["split"] in splits
            )  # fmt: skip
        test = [n / SAMPLE_RATE for t, n in tracks if t["split"] == "test"]
        excerpts = sum(min(seconds, params["report"]["excerpt_seconds"]) for seconds in test)
        with torch.device("meta"):  # a parameter count needs no memory for the weights
            count = count_parameters(build_model(m))
        out.points[point.name] = {
            "estimates": int(TARGETS * FLAC_BYTES_PER_SECOND * sum(test)),
            "weights": int(count * (WEIGHTS_BYTES_PER_PARAMETER + CHECKPOINT_BYTES_PER_PARAMETER)),
            "report": int(REPORT_BYTES_PER_SECOND * excerpts),
        }
        if not params["train"]["pretrained"]:
            working = (params["train"]["save_top_k"] + 2) * count * CHECKPOINT_BYTES_PER_PARAMETER
            out.working = max(out.working, int(working))
    out.caches = {_short(k): v for k, v in out.caches.items()}
    return out


def _short(key: str) -> str:
    data, prepare, n_fft, hop, splits = json.loads(key)
    return f"({data['source']}, n_fft {n_fft}, hop {hop}, {prepare['dtype']}, {'+'.join(splits)})"


def _workspace_params(repo: Path) -> dict[str, Any]:
    from ..config import load_params

    return load_params(repo / "params.yaml")


def _point_params(base: dict[str, Any], point: Point) -> dict[str, Any]:
    params = json.loads(json.dumps(base))
    for key, value in point.overrides.items():
        set_dotted(params, key, value)
    return validate(params, where=f"point {point.name}")


def _prepared_input(repo: Path) -> str | None:
    """The prepare input whose cache the workspace holds already (no new space for it)."""
    manifest, params = repo / "data" / "cache" / "manifest.json", repo / "params.yaml"
    if not manifest.is_file() or not params.is_file():
        return None
    p = _workspace_params(repo)
    return json.dumps(
        [
            p["data"],
            p["prepare"],
            p["model"]["n_fft"],
            p["model"]["hop_length"],
            json.loads(manifest.read_text())["splits"],
        ],
        sort_keys=True,
    )


def track_lengths(repo: Path, data: dict[str, Any]) -> tuple[list[tuple[dict[str, Any], int]], str]:
    """``[(track, samples)]`` for the ``data`` params, and where the lengths came from: the
    workspace's prepared cache or downloaded track list when they hold this source, the synthetic
    set's own params, else the published lengths of MUSDB18 (spread evenly over its tracks)."""
    if data["source"] == "synthetic":
        s = data["synthetic"]
        n = int(s["seconds"] * SAMPLE_RATE)
        tracks = [({"split": split}, n) for split in ("train", "valid", "test") for _ in range(s[f"{split}_tracks"])]
        return tracks, "the synthetic set's params"
    manifest = repo / "data" / "cache" / "manifest.json"
    m = json.loads(manifest.read_text()) if manifest.is_file() else {}
    if m.get("source") == data["source"] and set(m["splits"]) == {"train", "valid", "test"}:
        return [(t, t["samples"]) for t in m["tracks"]], f"the tracks prepared in {manifest.parent}"
    dataset = repo / "data" / "raw" / "dataset.json"
    if dataset.is_file() and json.loads(dataset.read_text()).get("source") == data["source"]:
        from ..data.tracks import read_dataset, track_samples

        tracks = read_dataset(dataset)["tracks"]
        return [(t, track_samples(t)) for t in tracks], f"the tracks listed in {dataset}"
    stem = {"stem_file": "x"} if data["source"] in ("musdb18", "musdb18-sample") else {}
    tracks = [
        ({"split": split, **stem}, int(MUSDB18_SECONDS[split] * SAMPLE_RATE / count))
        for split, count in MUSDB18_TRACKS.items()
        for _ in range(count)
    ]
    return tracks, "MUSDB18's published lengths (no prepared cache or track list in the workspace to measure)"


def dvc_cache_dir(repo: Path) -> Path:
    """Where DVC keeps the outputs (what ``dvc cache dir`` prints; a study's clones share it)."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc:
        return Path(dvc.cache.repo.path)


def check_space(repo: Path, projection: Projection, force: bool = False) -> str:
    """Refuse a study that does not fit where the DVC cache is (``force`` goes past it, saying so);
    returns a line saying what is free."""
    cache = dvc_cache_dir(repo)
    where = next(p for p in (cache, *cache.parents) if p.exists())
    free = shutil.disk_usage(where).free
    line = f"{_gb(free)} free on the file system of the DVC cache ({cache})"
    if projection.total <= free:
        return line
    message = (
        f"the study needs about {_gb(projection.total)} but {line}; free some space, move the DVC cache "
        f"(dvc cache dir PATH), or run fewer points"
    )
    if not force:
        raise DiskError(message + "; --force runs it anyway")
    return f"--force: {message}; running it anyway"
