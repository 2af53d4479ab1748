"""BSSEval v4 scores of separated test tracks (museval, the SiSEC 2018 convention), with context.

Every track is scored twice: its estimates, and the mixture itself as the estimate of every
target (the "input SDR" baseline), so that the tables also say how much separation gained.
Two engines compute the same metrics: museval itself, or ``bsseval`` (ours, batched torch, about
14x faster, 22x with the baseline); everything after the metric computation (museval JSON,
tables, MLflow) is shared (:mod:`lightsaft.evaluation.scores`). Whatever the engine, each track
also gets the whole-track SDR variants the field reports beside museval's (:mod:`.sdr_variants`:
the MDX 2021 challenge's SDR and SI-SDR), computed here on the same audio.
Tracks run in parallel worker processes because scoring is the slowest step of the pipeline;
a track that fails (or whose worker dies) is reported by name and the others are still kept.
With one job the tracks are scored in this process (no worker start-up: an interpreter that
imports torch costs seconds); the price is that a track killing its process (out of memory)
stops the stage instead of failing alone, so crash isolation needs ``jobs`` >= 2.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..bsseval import bss_eval_v4
from ..data.audio import AudioError, read_audio
from ..devices import resolve_device
from ..progress import Progress
from ..schema import registry
from ..spectral import SAMPLE_RATE, TARGETS
from ..workers import running
from . import params
from .estimate_files import estimate_path, read_clipped
from .scores import (
    KINDS,
    EvaluationError,
    EvaluationResult,
    failure_message,
    score_rows,
    score_table,
    summarize,
    variant_rows,
)
from .sdr_variants import score_track as score_variants


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
ENGINES = registry(params.ENGINES, fast=_fast, museval=_museval)


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
    """``<estimates_dir>/test/<track>/<target>.flac`` (or ``.wav``) for each target, float64 ``[L, 2]`` at 44.1 kHz."""
    estimates = {}
    for target in targets:
        path = estimate_path(estimates_dir, track, target)
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


def _score_one(track: str, estimates_dir: Path, targets: tuple[str, ...]) -> tuple[list[str], list[dict]]:
    """Worker: the estimate and baseline scores of one track: museval JSON strings, and the
    whole-track SDR variants (``sdr_mdx_<target>``, ``si_sdr_<target>``), one of each per kind."""
    audio, engine = _WORKER["cache"].load_audio(track), _WORKER["engine"]
    references = {t: audio[t] for t in targets}
    sets = [read_estimates(estimates_dir, track, targets), {t: audio["mixture"] for t in targets}]
    stores = score_sets(references, sets, track, engine=engine.name, device=engine.device)
    return [store.json for store in stores], [score_variants(references, est, track) for est in sets]


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


def _run_here(
    cache: Any, engine: Engine, tracks: list[str], estimates_dir: Path, targets: tuple[str, ...]
) -> dict[str, tuple[Any, str | None]]:
    """:func:`_run_pool`'s outcomes, scored one after another in this process."""
    _init_worker(cache, engine)
    outcomes = {}
    try:
        with Progress("evaluate", len(tracks), "track") as bar:
            for track in tracks:
                try:
                    outcomes[track] = _score_one(track, estimates_dir, targets), None
                except Exception as e:  # reported per track, as a worker's exception is
                    outcomes[track] = None, f"{type(e).__name__}: {e}"
                bar.advance(track)
    finally:
        _WORKER.clear()
    return outcomes


def _score_all(
    cache: Any, engine: Engine, tracks: list[str], estimates_dir: Path, targets: tuple[str, ...], jobs: int
) -> tuple[dict[str, tuple[list[str], list[dict]]], dict[str, str]]:
    """Score tracks in ``jobs`` processes (one job: in this process, see the module docstring). A
    dying worker breaks the whole pool, so the tracks it took down are rerun one per fresh process:
    only the track that kills its worker fails."""
    if jobs == 1:
        outcomes = _run_here(cache, engine, tracks, estimates_dir, targets)
    else:
        outcomes = _run_pool(jobs, cache, engine, tracks, estimates_dir, targets)
    for track in [t for t, (_, error) in outcomes.items() if error == CRASHED]:
        outcomes.update(_run_pool(1, cache, engine, [track], estimates_dir, targets))
    done = {t: result for t, (result, error) in outcomes.items() if error is None}
    return done, {t: error for t, (_, error) in outcomes.items() if error is not None}


def select_tracks(test_tracks: Sequence[str], wanted: Sequence[str] | None) -> list[str]:
    """``evaluate.tracks``: the test tracks to score (all when None), in the test set's order; a
    name that is not a test track is refused, naming it."""
    if wanted is None:
        return list(test_tracks)
    unknown = [name for name in wanted if name not in test_tracks]
    if unknown:
        shown = ", ".join(map(repr, list(test_tracks)[:8])) + (", ..." if len(test_tracks) > 8 else "")
        raise EvaluationError(
            f"evaluate.tracks: {', '.join(map(repr, unknown))} not among the {len(test_tracks)} test tracks "
            f"({shown}); name test tracks, or null for all of them"
        )
    return [t for t in test_tracks if t in wanted]


def evaluate_tracks(
    cache: Any,
    estimates_dir: str | Path,
    jobs: int = 1,
    targets: Sequence[str] = TARGETS,
    engine: str = "fast",
    device: str = "auto",
    tracks: Sequence[str] | None = None,
) -> EvaluationResult:
    """The ``evaluate`` stage: score the test tracks of ``cache`` (``tracks`` of them, when given:
    ``evaluate.tracks``) against their estimates, with museval's metrics and the SDR variants.

    ``engine`` (see :func:`score_sets`) runs in ``jobs`` processes that share the CPU cores (one
    job: in this process, without crash isolation); the
    fast engine's ``device`` (auto: CUDA when available) is resolved before any work starts.
    ``cache``: anything with ``.tracks("test")`` and ``.load_audio(name)`` (picklable: workers get
    a copy). The separate stage's clipped-sample counts (``clipped.json``), when it wrote them, are
    kept in ``result.clipped``. Failed tracks are in ``result.failed``; ``result.check()`` raises
    for them. Raises if no track could be scored.
    """
    targets, estimates_dir = tuple(targets), Path(estimates_dir)
    test_tracks = list(cache.tracks("test"))
    if not test_tracks:
        raise EvaluationError("the cache holds no test tracks; rerun the prepare stage")
    tracks = select_tracks(test_tracks, tracks)
    if not (estimates_dir / "test").is_dir():
        raise EvaluationError(f"{estimates_dir / 'test'}: not found; run the separate stage first")
    clipped = read_clipped(estimates_dir, tracks, targets)  # before hours of scoring: a bad file fails now
    scorer = Engine(engine, str(resolve_device(device)) if engine == "fast" else "cpu")
    done, failed = _score_all(cache, scorer, tracks, estimates_dir, targets, jobs)
    if not done:
        raise EvaluationError(failure_message(failed, len(tracks)))
    scored = [t for t in tracks if t in done]
    rows = []
    for track in scored:
        texts, variants = done[track]
        for kind, text, whole in zip(KINDS, texts, variants):
            rows += score_rows(track, text, kind) + variant_rows(track, whole, kind)
    scores = score_table(rows)
    summary, metrics = summarize(scores, targets)
    failures = {t: failed[t] for t in tracks if t in failed}
    counts = None
    if clipped is not None:
        counts = pd.DataFrame(
            [(t, target, clipped[t][target]) for t in scored for target in targets],
            columns=["track", "target", "clipped"],
        )
    return EvaluationResult(scores, summary, metrics, failures, {t: done[t][0][0] for t in scored}, counts)
