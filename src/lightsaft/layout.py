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
SDR_PLOT = Path("plots/sdr_per_target.csv")
# report
REPORT = Path("results/report")


@dataclass(frozen=True)
class StageSpec:
    """``params``: the result-changing params the stage reads (whole sections or dotted keys);
    ``inputs``: the outputs of earlier stages it reads; ``outputs``: what it writes (outs, metrics
    and plots)."""

    params: tuple[str, ...]
    inputs: tuple[Path, ...] = ()
    outputs: tuple[Path, ...] = field(default=())


STAGES: dict[str, StageSpec] = {
    "download": StageSpec(("data",), (), (RAW,)),
    "prepare": StageSpec(("prepare", "model.n_fft", "model.hop_length", "train.pretrained"), (RAW,), (CACHE,)),
    "train": StageSpec(
        ("model", "train", "trainer", "mlflow"),
        (CACHE,),
        (WEIGHTS, CHECKPOINT, TRAIN_METRICS, RUN_FILE, TRAIN_CURVES),
    ),
    "separate": StageSpec(("separate",), (WEIGHTS, CACHE), (ESTIMATES,)),
    "evaluate": StageSpec(("evaluate", "separate"), (ESTIMATES, CACHE, RUN_FILE), (SCORES, SDR_METRICS, SDR_PLOT)),
    "report": StageSpec(
        ("report",),
        (SCORES, ESTIMATES, CACHE, TRAIN_CURVES, TRAIN_METRICS, WEIGHTS, RUN_FILE),
        (REPORT,),
    ),
}
