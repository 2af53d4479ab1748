"""BSSEval v4 scores of separated test tracks (museval, the SiSEC 2018 convention), with context.

Every track is scored twice: its estimates, and the mixture itself as the estimate of every
target (the "input SDR" baseline), so that the tables also say how much separation gained.
Two engines compute the same metrics: museval itself, or ``bsseval`` (ours, batched torch, about
14x faster, 22x with the baseline); everything after the metric computation (museval JSON,
tables, MLflow) is shared.
Tracks run in parallel worker processes because scoring is the slowest step of the pipeline;
a track that fails (or whose worker dies) is reported by name and the others are still kept.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from concurrent.futures import Future, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .bsseval import bss_eval_v4
from .data.audio import AudioError, read_audio
from .devices import resolve_device
from .errors import LightSAFTError
from .paths import atomic_dir, atomic_path, write_text_atomic
from .progress import Progress
from .spectral import SAMPLE_RATE, TARGETS
from .workers import running

METRICS = ("SDR", "SIR", "ISR", "SAR")
NOISE_DB = 150.0  # SIR/ISR/SAR above this are rounding noise: a residual at float precision, not a score
KINDS = ("estimate", "baseline")  # scores.csv `kind`: the model's estimates / the mixture as estimate


class EvaluationError(LightSAFTError, RuntimeError):
    """Estimates are missing or do not match their references, or some tracks failed."""


@dataclass
class EvaluationResult:
    """``scores``: long table, one row per track/target/metric/frame/kind. ``summary``: median
    over frames then over tracks, per target and metric, with baseline and improvement (plus a
    ``mean`` SDR row). ``metrics``: flat dict for ``metrics/sdr.json``. ``failed``: track -> why."""

    scores: pd.DataFrame
    summary: pd.DataFrame
    metrics: dict[str, float]
    failed: dict[str, str] = field(default_factory=dict)
    museval_json: dict[str, str] = field(default_factory=dict)  # track -> museval's JSON of its estimates

    def check(self) -> None:
        """Raise EvaluationError naming the failed tracks (the others' scores are already written)."""
        if self.failed:
            total = self.scores["track"].nunique() + len(self.failed)
            raise EvaluationError(failure_message(self.failed, total))


def score_sets(
    references: dict[str, np.ndarray],
    estimate_sets: Sequence[dict[str, np.ndarray]],
    track: str = "track",
    rate: int = SAMPLE_RATE,
    engine: str = "fast",
    device: str = "cpu",
) -> list[Any]:
    """BSSEval v4 (1 s windows and hops, time-invariant filters) of each estimate set against the
    same-named ``references`` (any names, at least two), one ``museval.TrackStore`` per set.

    ``engine``: ``museval`` (the reference implementation) or ``fast`` (``bsseval``: the same
    numbers, sharing the reference correlations between the sets, on ``device``).
    """
    _check_engine(engine)
    names = list(estimate_sets[0])
    if (
        len(names) < 2
        or any(name not in references for name in names)
        or any(list(est) != names for est in estimate_sets)
    ):
        raise EvaluationError(
            f"{track}: need references for at least two estimated targets; "
            f"estimates {[list(e) for e in estimate_sets]}, references {list(references)}"
        )
    length = len(references[names[0]])
    for name in names:
        for est in estimate_sets:
            if references[name].shape != (length, 2) or est[name].shape != (length, 2):
                raise EvaluationError(
                    f"{track}/{name}: estimate {est[name].shape}, reference "
                    f"{references[name].shape}; both must be [{length}, 2] (rerun separate)"
                )
    refs = [references[n] for n in names]
    sets = [[est[n] for n in names] for est in estimate_sets]
    results = ENGINES[engine](refs, sets, rate, device)
    import museval

    stores = []
    for sdr, isr, sir, sar in results:  # each [targets, windows]
        store = museval.TrackStore(track_name=track, win=1.0, hop=1.0)
        for i, name in enumerate(names):
            store.add_target(
                target_name=name,
                values={"SDR": sdr[i].tolist(), "SIR": sir[i].tolist(), "ISR": isr[i].tolist(), "SAR": sar[i].tolist()},
            )
        stores.append(store)
    return stores


def _fast(refs: list[np.ndarray], sets: list[list[np.ndarray]], rate: int, device: str) -> list[np.ndarray]:
    return bss_eval_v4(refs, sets, window=rate, hop=rate, device=resolve_device(device))


def _museval(refs: list[np.ndarray], sets: list[list[np.ndarray]], rate: int, device: str) -> list[np.ndarray]:
    import museval

    references = np.array(refs, dtype=np.float64)
    return [
        np.stack(museval.evaluate(references, np.array(est, dtype=np.float64), win=rate, hop=rate, mode="v4"))
        for est in sets
    ]


# evaluate.engine: each turns references [targets] and estimate sets [sets][targets] (float [L, 2]) into,
# per set, [SDR, ISR, SIR, SAR] x [targets, windows].
ENGINES = {"fast": _fast, "museval": _museval}


def _check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise EvaluationError(f"evaluate.engine {engine!r}: choose one of {', '.join(ENGINES)}")


def score_track(
    references: dict[str, np.ndarray],
    estimates: dict[str, np.ndarray],
    track: str = "track",
    rate: int = SAMPLE_RATE,
    engine: str = "fast",
    device: str = "cpu",
) -> Any:
    """:func:`score_sets` of one estimate set."""
    return score_sets(references, [estimates], track, rate, engine, device)[0]


def read_estimates(estimates_dir: str | Path, track: str, targets: Sequence[str]) -> dict[str, np.ndarray]:
    """``<estimates_dir>/test/<track>/<target>.wav`` for each target, float64 ``[L, 2]`` at 44.1 kHz."""
    estimates = {}
    for target in targets:
        path = Path(estimates_dir) / "test" / track / f"{target}.wav"
        audio, rate = read_audio(path)
        if rate != SAMPLE_RATE or audio.shape[1] != 2:
            raise AudioError(
                f"{path}: {rate} Hz, {audio.shape[1]} channel(s); estimates must be "
                f"stereo {SAMPLE_RATE} Hz; rerun the separate stage"
            )
        estimates[target] = audio.astype(np.float64)
    return estimates


@dataclass(frozen=True)
class Engine:
    """How tracks are scored: ``name`` (museval or fast) and, for the fast engine, torch ``device``."""

    name: str
    device: str


_WORKER: dict[str, Any] = {}  # the worker's cache and engine, set once per process (not per task)


def _init_worker(cache: Any, engine: Engine) -> None:
    _WORKER.update(cache=cache, engine=engine)


def _score_one(track: str, estimates_dir: Path, targets: tuple[str, ...]) -> tuple[str, str]:
    """Worker: the estimate and baseline scores of one track, as museval JSON strings."""
    audio, engine = _WORKER["cache"].load_audio(track), _WORKER["engine"]
    references = {t: audio[t] for t in targets}
    estimates = read_estimates(estimates_dir, track, targets)
    mixture = audio["mixture"]
    stores = score_sets(
        references, [estimates, {t: mixture for t in targets}], track, engine=engine.name, device=engine.device
    )
    return stores[0].json, stores[1].json


CRASHED = "its worker process died (killed, or out of memory)"


def _outcome(future: Future) -> tuple[Any, str | None]:
    try:
        return future.result(), None
    except BrokenProcessPool:
        return None, CRASHED
    except Exception as e:  # the worker's exception, re-raised here: reported per track
        return None, f"{type(e).__name__}: {e}"


def _run_pool(
    jobs: int, cache: Any, engine: Engine, tracks: list[str], estimates_dir: Path, targets: tuple[str, ...]
) -> dict[str, tuple[Any, str | None]]:
    with running(min(jobs, len(tracks)), _init_worker, (cache, engine)) as pool:
        futures = {pool.submit(_score_one, track, estimates_dir, targets): track for track in tracks}
        outcomes = {}
        with Progress("evaluate", len(futures), "track") as bar:
            for future in as_completed(futures):
                outcomes[futures[future]] = _outcome(future)
                bar.advance(futures[future])
        return outcomes


def _score_all(
    cache: Any, engine: Engine, tracks: list[str], estimates_dir: Path, targets: tuple[str, ...], jobs: int
) -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
    """Score tracks in ``jobs`` processes. A dying worker breaks the whole pool, so the tracks it
    took down are rerun one per fresh process: only the track that kills its worker fails."""
    outcomes = _run_pool(jobs, cache, engine, tracks, estimates_dir, targets)
    for track in [t for t, (_, error) in outcomes.items() if error == CRASHED]:
        outcomes.update(_run_pool(1, cache, engine, [track], estimates_dir, targets))
    done = {t: result for t, (result, error) in outcomes.items() if error is None}
    return done, {t: error for t, (_, error) in outcomes.items() if error is not None}


# ---------------------------------------------------------------------------------------
# Tables
def score_rows(track: str, museval_json: str, kind: str) -> list[tuple]:
    """Long-format rows ``(track, target, metric, frame, value, kind)`` of one museval JSON."""
    data = json.loads(museval_json)  # museval writes NaN for silent frames; json reads it back
    return [
        (track, target["name"], metric, i, float(frame["metrics"][metric]), kind)
        for target in data["targets"]
        for metric in METRICS
        for i, frame in enumerate(target["frames"])
    ]


def summarize(scores: pd.DataFrame, targets: Sequence[str] = TARGETS) -> tuple[pd.DataFrame, dict[str, float]]:
    """Median over frames, then over tracks (NaN frames skipped, as museval aggregates), per
    target and metric; baseline and improvement columns; a ``mean`` row: the mean target SDR."""
    per_track = scores.groupby(["kind", "target", "metric", "track"])["value"].median()
    table = per_track.groupby(level=["kind", "target", "metric"]).median().unstack("kind")
    table = table.reindex(
        index=pd.MultiIndex.from_product([list(targets), METRICS], names=["target", "metric"]), columns=list(KINDS)
    )
    table["improvement"] = table["estimate"] - table["baseline"]
    table.loc[("mean", "SDR"), :] = table.xs("SDR", level="metric").mean(skipna=False)
    summary = table.reset_index()
    summary.columns.name = None
    metrics = {"tracks": float(scores["track"].nunique())}
    sdr = summary[summary["metric"] == "SDR"].set_index("target")
    for column, prefix in (("estimate", "sdr"), ("baseline", "baseline_sdr"), ("improvement", "sdr_improvement")):
        metrics.update({f"{prefix}_{target}": float(value) for target, value in sdr[column].items()})
    return summary, metrics


def evaluate_tracks(
    cache: Any,
    estimates_dir: str | Path,
    jobs: int = 1,
    targets: Sequence[str] = TARGETS,
    engine: str = "fast",
    device: str = "auto",
) -> EvaluationResult:
    """The ``evaluate`` stage: score every test track of ``cache`` against its estimates.

    ``engine`` (see :func:`score_sets`) runs in ``jobs`` processes that share the CPU cores; the
    fast engine's ``device`` (auto: CUDA when available) is resolved before any work starts.
    ``cache``: anything with ``.tracks("test")`` and ``.load_audio(name)`` (picklable: workers get
    a copy). Failed tracks are in ``result.failed``; ``result.check()`` raises for them. Raises if
    no track could be scored.
    """
    targets, estimates_dir = tuple(targets), Path(estimates_dir)
    tracks = list(cache.tracks("test"))
    if not tracks:
        raise EvaluationError("the cache holds no test tracks; rerun the prepare stage")
    if not (estimates_dir / "test").is_dir():
        raise EvaluationError(f"{estimates_dir / 'test'}: not found; run the separate stage first")
    _check_engine(engine)
    scorer = Engine(engine, str(resolve_device(device)) if engine == "fast" else "cpu")
    done, failed = _score_all(cache, scorer, tracks, estimates_dir, targets, jobs)
    if not done:
        raise EvaluationError(failure_message(failed, len(tracks)))
    scored = [t for t in tracks if t in done]
    rows = [row for t in scored for kind, text in zip(KINDS, done[t]) for row in score_rows(t, text, kind)]
    scores = pd.DataFrame(rows, columns=["track", "target", "metric", "frame", "value", "kind"])
    summary, metrics = summarize(scores, targets)
    failures = {t: failed[t] for t in tracks if t in failed}
    return EvaluationResult(scores, summary, metrics, failures, {t: done[t][0] for t in scored})


def write_scores(result: EvaluationResult, out_dir: str | Path) -> Path:
    """``museval/test/<track>.json`` (museval's format and layout, so sigsep's
    ``MethodStore.add_eval_dir(out_dir / "museval")`` reads it), ``scores.csv`` and ``summary.csv``,
    replacing ``out_dir`` as a whole."""
    with atomic_dir(out_dir) as tmp:
        (tmp / "museval" / "test").mkdir(parents=True)
        for track, text in result.museval_json.items():
            (tmp / "museval" / "test" / f"{track}.json").write_text(text)
        result.scores.to_csv(tmp / "scores.csv", index=False, float_format="%.5f")
        result.summary.to_csv(tmp / "summary.csv", index=False, float_format="%.5f")
    return Path(out_dir)


def readable(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary as people read it: SIR/ISR/SAR above :data:`NOISE_DB` (typically the mixture
    baseline, which lies in the span of the references, so its residuals are rounding noise) and
    their improvements shown as ``-``; SDR and every stored value untouched."""
    shown = summary.astype(object)
    noise = summary[["estimate", "baseline"]].gt(NOISE_DB).mul(summary["metric"] != "SDR", axis=0)
    for kind in ("estimate", "baseline"):
        shown.loc[noise[kind], kind] = "-"
    shown.loc[noise.any(axis=1), "improvement"] = "-"
    return shown.map(lambda v: f"{v:.3f}" if isinstance(v, float) else v)


def failure_message(failed: dict[str, str], total: int) -> str:
    return f"evaluation failed for {len(failed)} of {total} track(s): " + "; ".join(
        f"{track!r}: {why}" for track, why in failed.items()
    )


def write_metrics(path: str | Path, metrics: dict[str, float]) -> None:
    """``metrics/sdr.json`` for DVC (NaN, e.g. a target silent in every frame, becomes null)."""
    clean = {key: None if math.isnan(value) else round(value, 5) for key, value in metrics.items()}
    write_text_atomic(path, json.dumps(clean, indent=2) + "\n")


def per_track_sdr(scores: pd.DataFrame) -> pd.DataFrame:
    """Median SDR over frames (NaN frames skipped) per track and target; one column per kind."""
    sdr = scores[scores["metric"] == "SDR"]
    return sdr.groupby(["track", "target", "kind"])["value"].median().unstack("kind")


def write_sdr_plot(path: str | Path, summary: pd.DataFrame) -> None:
    """``plots/sdr_per_target.csv`` for ``dvc plots``: target, sdr, baseline_sdr (median dB)."""
    rows = summary[(summary["metric"] == "SDR") & (summary["target"] != "mean")]
    table = rows.rename(columns={"estimate": "sdr", "baseline": "baseline_sdr"})[["target", "sdr", "baseline_sdr"]]
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.5f")
