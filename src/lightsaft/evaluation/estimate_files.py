"""The separate stage's output as the evaluate stage and the report read it.

``<estimates>/test/<track>/<target>.flac`` (16-bit PCM, clipped to [-1, 1], as the official
evaluation's 16-bit file is) or ``<target>.wav`` (float, as earlier separate stages wrote): whichever
exists, so that evaluation reads estimates of either kind. ``<estimates>/clipped.json``, when the
separate stage wrote one: ``{track: {target: samples clipped}}``.
"""

from __future__ import annotations

import json
from pathlib import Path

from .scores import EvaluationError

SUFFIXES = (".flac", ".wav")
CLIPPED = "clipped.json"


def estimate_path(estimates_dir: str | Path, track: str, target: str) -> Path:
    """The file holding ``target``'s estimate of ``track``: its ``.flac`` or its ``.wav``, exactly one."""
    folder = Path(estimates_dir) / "test" / track
    found = [folder / f"{target}{suffix}" for suffix in SUFFIXES if (folder / f"{target}{suffix}").is_file()]
    if not found:
        raise EvaluationError(f"{folder / target}.flac (or .wav): estimate not found; rerun the separate stage")
    if len(found) > 1:
        raise EvaluationError(
            f"{folder}: both {found[0].name} and {found[1].name}; no separate stage writes both "
            "(a folder mixed by hand?): rerun the separate stage"
        )
    return found[0]


def read_clipped(estimates_dir: str | Path, tracks: list[str], targets: tuple[str, ...]) -> dict | None:
    """``{track: {target: count}}`` of ``tracks`` from ``clipped.json``, or None when the separate
    stage wrote none (estimates that were not clipped: float WAV)."""
    path = Path(estimates_dir) / CLIPPED
    if not path.is_file():
        return None
    try:
        counts = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EvaluationError(f"{path}: not valid JSON ({e}); rerun the separate stage") from None
    out = {}
    for track in tracks:
        entry = counts.get(track) if isinstance(counts, dict) else None
        values = [entry.get(t) if isinstance(entry, dict) else None for t in targets]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            raise EvaluationError(
                f"{path}: no clipped-sample counts for {track!r} (expected {{target: count}} for "
                f"{', '.join(targets)}, got {entry!r}); rerun the separate stage"
            )
        out[track] = dict(zip(targets, values))
    return out
