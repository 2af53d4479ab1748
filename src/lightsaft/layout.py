"""What each DVC stage reads and writes, as dvc.yaml declares it (a test keeps the two equal).

dvc.yaml is the source of truth: it tells DVC what to cache, compare and rerun. The stage entry
points (``pipeline/*.py``) take their paths from here rather than spelling them out, and each
stage gets only the params it declares: a stage cannot read a param that DVC does not track for it.
Relative paths are relative to the repository (or the DVC experiment copy) the stage runs in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# download
RAW = Path("data/raw")
DATASET = RAW / "dataset.json"
# prepare
CACHE = Path("data/cache")
# train
WEIGHTS = Path("models/weights.pt")
CHECKPOINT = Path("models/best.ckpt")
RUN_FILE = Path("models/mlflow_run.json")
TRAIN_METRICS = Path("metrics/train.json")
TRAIN_CURVES = Path("plots/train_curves.csv")
# separate
ESTIMATES = Path("results/estimates")
# evaluate
SCORES = Path("results/scores")
SDR_METRICS = Path("metrics/sdr.json")
PER_TRACK_SDR = Path("metrics/per_track_sdr.csv")  # git-tracked: what study comparisons pair on
SDR_PLOT = Path("plots/sdr_per_target.csv")
# report
REPORT = Path("results/report")


@dataclass(frozen=True)
class StageSpec:
    """``params``: the result-changing params the stage reads (whole sections or dotted keys);
    ``inputs``: the outputs of earlier stages it reads; ``outputs``: what it writes (outs, metrics
    and plots); ``records``: the recording sections it is handed (in no DVC ``params:``)."""

    params: tuple[str, ...]
    inputs: tuple[Path, ...] = ()
    outputs: tuple[Path, ...] = field(default=())
    records: tuple[str, ...] = ()


STAGES: dict[str, StageSpec] = {
    "download": StageSpec(("data",), (), (RAW,)),
    "prepare": StageSpec(("prepare", "model.n_fft", "model.hop_length", "train.pretrained"), (RAW,), (CACHE,)),
    "train": StageSpec(
        ("model", "train", "trainer"),
        (CACHE,),
        (WEIGHTS, CHECKPOINT, TRAIN_METRICS, RUN_FILE, TRAIN_CURVES),
        records=("mlflow",),
    ),
    "separate": StageSpec(("separate",), (WEIGHTS, CACHE), (ESTIMATES,)),
    "evaluate": StageSpec(
        ("evaluate", "separate"), (ESTIMATES, CACHE, RUN_FILE), (SCORES, SDR_METRICS, PER_TRACK_SDR, SDR_PLOT)
    ),
    "report": StageSpec(
        ("report", "model"),
        (SCORES, ESTIMATES, CACHE, TRAIN_CURVES, TRAIN_METRICS, RUN_FILE),
        (REPORT,),
    ),
}

# ---------------------------------------------------------------------------------------
# The code: what each module of the package is to DVC (tests/test_layout.py checks that every
# module is in exactly one class and that each stage's code deps in dvc.yaml are the modules its
# entry point imports, less those that shape none of its outputs).
#
# - plumbing: reads and checks params, reports errors, names paths. It shapes no output (a
#   params default that matters is spelled out in params.yaml, which DVC tracks), so no stage
#   depends on it.
# - recording: records or displays a run (MLflow runs and logged models, progress bars) or moves
#   bytes whose checksum is verified (download transport): no stage depends on it, so editing a
#   progress bar or the MLflow run description reruns nothing.
# - result: everything else a stage imports; a stage depends on each such module it imports.
# - face: what users run by hand (the command line, studies, the song page's command); no stage
#   imports it.
# Patterns: a module name, or ``package.*`` for every module in a package.
CODE_CLASSES: dict[str, tuple[str, ...]] = {
    "plumbing": ("config", "schema", "stage", "errors", "layout", "environment", "*.params"),
    "recording": ("tracking.*", "progress", "fetch"),
    "face": ("cli", "songs", "study.*"),
    "result": (
        "bsseval",
        "devices",
        "download",
        "dvc_experiments",
        "paths",
        "prepare",
        "spectral",
        "train",
        "workers",
        "data.*",
        "evaluation.*",
        "model.*",
        "report.*",
        "separation.*",
        "training.*",
        "weights.*",
    ),
}


def code_class(module: str) -> str | None:
    """The class of ``lightsaft.<module>`` (e.g. ``tracking.store``), None when unclassified. An
    exact name wins over a package pattern, and ``*.params`` over both."""
    name = module.removeprefix("lightsaft.")
    if name.rsplit(".", 1)[-1] == "params" and "." in name:
        return "plumbing"
    for kind, patterns in CODE_CLASSES.items():
        if name in patterns:
            return kind
    for kind, patterns in CODE_CLASSES.items():
        if any(p.endswith(".*") and name.startswith(p[:-1]) for p in patterns):
            return kind
    return None
