"""The ``report`` stage: a self-contained results page in the style of the LightSAFT demo page.

``results/report/`` holds ``index.html`` (an offline page, see :mod:`lightsaft.report.blocks`),
``curves.png`` (the training curves; ``dvc plots show`` would load vega from a CDN) and
``audio/<track-slug>/<source>.<fmt>``: compressed excerpts of the mixture and of the four
estimates, so the page stays small. The folder is written beside its place and renamed into it,
so it is complete or absent.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import soundfile as sf

from ..errors import LightSAFTError
from ..evaluation.estimate_files import estimate_path
from ..evaluation.scores import (
    CLIPPED_CSV,
    DEFINITIONS,
    METRICS,
    NOISE_DB,
    VARIANTS,
    EvaluationError,
    per_track_sdr,
    track_table,
)
from ..paths import atomic_dir
from ..progress import progress
from ..spectral import SAMPLE_RATE, TARGETS
from .blocks import document, encode_excerpts, facts_list, model_facts, source_figure, track_row, unique_slugs
from .blocks import number as _number

CURVE_COLUMNS = ("epoch", "train_loss", "val_loss", "lr")  # of the train stage's plots/train_curves.csv


class ReportError(LightSAFTError, RuntimeError):
    """An input of the report is missing or does not match the others."""


def build_report(
    out_dir: str | Path,
    *,
    cache: Any,
    scores_dir: str | Path,
    estimates_dir: str | Path,
    curves_csv: str | Path,
    train_metrics: str | Path,
    model_params: dict[str, Any],
    excerpt_seconds: float = 15.0,
    excerpt_offset: float = 0.0,
    audio_format: str = "mp3",
    dataset: str | None = None,
) -> Path:
    """Write the report of the test tracks of ``cache`` to ``out_dir`` (replaced as a whole).

    ``cache``: anything with ``.tracks("test")`` and ``.load_audio(track, start, stop, stems)``
    (:class:`lightsaft.data.cache.Cache`). ``scores_dir``: the evaluate stage's ``scores.csv``,
    ``summary.csv`` and, when the estimates were clipped to 16 bits, ``clipped.csv``; the page
    shows the test tracks scored there (all, or those of ``evaluate.tracks``). Excerpts start
    ``excerpt_offset`` seconds in and end after ``excerpt_seconds`` or at the end of the track.
    ``dataset`` names the data on the page.
    """
    test_tracks = list(cache.tracks("test"))
    scores = _read_csv(Path(scores_dir) / "scores.csv", ("track", "target", "metric", "frame", "value", "kind"))
    summary = _read_csv(Path(scores_dir) / "summary.csv", ("target", "metric", "estimate", "baseline", "improvement"))
    tracks = scored_tracks(scores, test_tracks, Path(scores_dir) / "scores.csv")
    per_track = TrackScores(per_track_sdr(scores), track_table(scores).set_index(["track", "target"]),
                            read_clipped(Path(scores_dir) / CLIPPED_CSV))  # fmt: skip
    curves = _read_csv(Path(curves_csv), CURVE_COLUMNS, rows=False)  # no rows: a model given, not trained
    facts = run_facts(train_metrics, model_params, len(tracks), dataset, len(test_tracks))
    slugs = unique_slugs(tracks)
    with atomic_dir(out_dir) as tmp:
        if not curves.empty:
            plot_curves(curves, tmp / "curves.png")
        rows = [
            write_excerpts(
                cache, track, Path(estimates_dir), tmp, slugs[track], audio_format, excerpt_seconds, excerpt_offset
            )
            for track in progress(tracks, "report", "track")
        ]
        page = render_page(facts, summary, tracks, rows, per_track, excerpt_seconds, trained=not curves.empty)
        (tmp / "index.html").write_text(page, encoding="utf-8")
    return Path(out_dir)


# ---------------------------------------------------------------------------------------
# Inputs
def _read_csv(path: Path, columns: tuple[str, ...], rows: bool = True) -> pd.DataFrame:
    if not path.is_file():
        raise ReportError(f"{path}: not found; run the stage that writes it first (dvc repro)")
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ReportError(f"{path}: not a readable CSV table ({e}); rerun the stage that writes it") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ReportError(
            f"{path}: columns {missing} missing (it has {list(table.columns)}); rerun the stage that writes it"
        )
    if table.empty and rows:
        raise ReportError(f"{path}: no rows; rerun the stage that writes it")
    return table


def scored_tracks(scores: pd.DataFrame, test_tracks: list[str], path: Path) -> list[str]:
    """The test tracks that ``scores`` scored, in the test set's order (every test track, or those
    ``evaluate.tracks`` named); a scored track that is not a test track means stale scores."""
    scored = set(scores["track"])
    if stale := sorted(scored - set(test_tracks)):
        raise ReportError(
            f"{path}: scores for {stale}, which are not test tracks (the test tracks are {sorted(test_tracks)}); "
            f"rerun the separate and evaluate stages"
        )
    return [t for t in test_tracks if t in scored]


@dataclass(frozen=True)
class TrackScores:
    """Per track and target: ``sdr`` museval's median SDR (columns ``estimate``, ``baseline``),
    ``variants`` the whole-track SDRs (columns ``sdr_mdx``, ``si_sdr``), ``clipped`` the samples
    clipped in the 16-bit estimate ({} when the estimates say nothing of it)."""

    sdr: pd.DataFrame
    variants: pd.DataFrame
    clipped: dict[tuple[str, str], int]


def read_clipped(path: Path) -> dict[tuple[str, str], int]:
    """``clipped.csv`` as {(track, target): samples}; {} when the evaluate stage wrote none."""
    if not path.is_file():
        return {}
    table = _read_csv(path, ("track", "target", "clipped"), rows=False)
    return {(row.track, row.target): int(row.clipped) for row in table.itertuples()}


def run_facts(
    train_metrics: str | Path, model_params: dict[str, Any], tracks: int, dataset: str | None, test_tracks: int = 0
) -> dict[str, str]:
    """The header: the model's config (the ``model`` params) and how its training went (``train.json``,
    which also holds the parameter count)."""
    path = Path(train_metrics)
    try:
        metrics = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportError(f"{path}: not found; run the train stage first (dvc repro train)") from None
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not valid JSON ({e}); rerun the train stage") from None
    for key in ("param_count", "steps", "epochs", "best_val_loss"):
        if key not in metrics:
            raise ReportError(f"{path}: no {key!r}; rerun the train stage")
    facts = model_facts(model_params, metrics["param_count"])
    if metrics.get("pretrained"):  # train.pretrained: imported, not trained here
        facts["Weights"] = f"{metrics['pretrained']} (sha256 {metrics.get('pretrained_sha256', '?')[:12]}…)"
    else:
        facts["Steps"] = f"{metrics['steps']:,} ({metrics['epochs']} epochs)"
        facts["Best val loss"] = _number(metrics["best_val_loss"], ".4g")
    facts["Test tracks"] = str(tracks) if tracks == test_tracks or not test_tracks else f"{tracks} of {test_tracks}"
    if dataset:
        facts["Data"] = dataset
    return facts


# ---------------------------------------------------------------------------------------
# Outputs
def write_excerpts(
    cache: Any,
    track: str,
    estimates_dir: Path,
    report_dir: Path,
    slug: str,
    audio_format: str,
    seconds: float,
    offset: float,
) -> dict[str, str]:
    """Encode the same excerpt of the mixture and of each estimate into ``audio/<slug>/``;
    returns source -> path relative to ``report_dir``. Samples beyond [-1, 1] are clipped, as a player would."""
    try:
        files = {t: estimate_path(estimates_dir, track, t) for t in TARGETS}
    except EvaluationError as e:
        raise ReportError(str(e)) from None
    length = sf.info(str(files[TARGETS[0]])).frames
    start = round(offset * SAMPLE_RATE)
    if start >= length:
        raise ReportError(
            f"report.excerpt_offset = {offset}: beyond the end of {track!r} ({length / SAMPLE_RATE:.1f} s); lower it"
        )
    stop = min(length, start + round(seconds * SAMPLE_RATE))
    audio = {"mixture": cache.load_audio(track, start=start, stop=stop, stems=("mixture",))["mixture"]}
    for target, path in files.items():
        audio[target], rate = sf.read(str(path), start=start, stop=stop, dtype="float32", always_2d=True)
        if rate != SAMPLE_RATE or audio[target].shape != audio["mixture"].shape:
            raise ReportError(
                f"{path}: {rate} Hz, excerpt {audio[target].shape}; expected {SAMPLE_RATE} Hz "
                f"and the mixture's {audio['mixture'].shape}; rerun the separate stage"
            )
    return encode_excerpts(report_dir / "audio" / slug, report_dir, audio, SAMPLE_RATE, audio_format)


def plot_curves(curves: pd.DataFrame, path: Path) -> None:
    """Training loss, validation loss (its best epoch marked) and learning rate per epoch, side
    by side: the two losses are different functions, on different scales."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(
        1, 3, figsize=(12, 3.2), dpi=110, layout="constrained", gridspec_kw={"width_ratios": [2, 2, 1.2]}
    )
    for ax, column, color, title in zip(
        axes,
        ("train_loss", "val_loss", "lr"),
        ("#3465a4", "#c4540c", "#555555"),
        ("Training loss", "Validation loss", "Learning rate"),
    ):
        data = curves.dropna(subset=[column])
        marker = "." if len(data) < 30 else None
        if column == "lr":
            ax.step(data["epoch"], data[column], where="post", color=color, marker=marker)
            ax.set_yscale("log")
        else:
            ax.plot(data["epoch"], data[column], color=color, marker=marker)
        ax.set(title=title, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    valid = curves.dropna(subset=["val_loss"])
    if len(valid):
        best = valid.loc[valid["val_loss"].idxmin()]
        axes[1].plot(
            [best["epoch"]],
            [best["val_loss"]],
            "o",
            color="#c4540c",
            mfc="white",
            ms=8,
            label=f"best {best['val_loss']:.4g} (epoch {int(best['epoch'])})",
        )
        axes[1].legend(frameon=False)
    fig.savefig(path, format="png")
    plt.close(fig)


def _score(value: Any) -> str:
    """SIR/ISR/SAR: above NOISE_DB a value is rounding noise, not a score."""
    return "–" if value is not None and not pd.isna(value) and float(value) > NOISE_DB else _number(value)


VARIANT_LABELS = {"SDR_MDX": "SDR (MDX)", "SI_SDR": "SI-SDR"}


def _summary_table(summary: pd.DataFrame) -> str:
    """Per target: museval's SDR, the mixture's, the gain, SIR/ISR/SAR (model values), then the
    whole-track SDR variants when the scores hold them (model values)."""
    table = summary.set_index(["target", "metric"])
    variants = [m for m in VARIANTS if m in set(summary["metric"])]
    head = (
        "<tr><th>Target</th><th>SDR</th><th>Mixture SDR</th><th>Improvement</th>"
        + "".join(f"<th>{m}</th>" for m in METRICS[1:])
        + "".join(f"<th>{VARIANT_LABELS[m]}</th>" for m in variants)
        + "</tr>"
    )
    rows = []
    for target in (*TARGETS, "mean"):
        value = {m: table.loc[(target, m)] if (target, m) in table.index else {} for m in (*METRICS, *variants)}
        sdr = value["SDR"]
        others = "".join(f"<td>{_score(value[m].get('estimate'))}</td>" for m in METRICS[1:])
        others += "".join(f"<td>{_number(value[m].get('estimate'))}</td>" for m in variants)
        rows.append(
            f'<tr class="{"mean" if target == "mean" else "target"}"><th>{target.capitalize()}</th>'
            f"<td><b>{_number(sdr.get('estimate'))}</b></td><td>{_number(sdr.get('baseline'))}</td>"
            f"<td>{_number(sdr.get('improvement'), '+.2f')}</td>{others}</tr>"
        )
    return f'<table class="summary"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def _definitions(summary: pd.DataFrame) -> str:
    """Which SDR each column is (only the SDRs the table shows)."""
    variants = [m for m in VARIANTS if m in set(summary["metric"])]
    lines = [f"SDR, SIR, ISR, SAR: {DEFINITIONS['SDR']}; the mean row averages the four targets"]
    lines += [f"{VARIANT_LABELS[m]}: {DEFINITIONS[m]}" for m in variants]
    if variants:
        lines.append("the three SDRs are computed differently and are not comparable with each other")
    return "; ".join(html.escape(line) for line in lines) + "."


def _clipped_note(clipped: dict[tuple[str, str], int]) -> str:
    """Samples clipped to [-1, 1] in the 16-bit estimates, per target, when any were."""
    totals = {t: [n for (_, target), n in clipped.items() if target == t and n] for t in TARGETS}
    parts = [f"{t} {sum(n):,} samples in {len(n)} track{'s' * (len(n) != 1)}" for t, n in totals.items() if n]
    if not parts:
        return ""
    return (
        '<p class="note clipped">Estimates clipped to [-1, 1] when written as 16-bit audio (as the official '
        f"evaluation's 16-bit file is; the scores are of the clipped audio): {html.escape('; '.join(parts))}.</p>"
    )


def _track_row(track: str, files: dict[str, str], scores: TrackScores) -> str:
    """The mixture and each estimate, with the estimate's SDR on the whole track and the mixture's,
    the whole-track variants, and the samples clipped when there were any."""
    cells = []
    for name, path in files.items():
        score = ""
        if name != "mixture":
            key = (track, name)
            values = scores.sdr.loc[key] if key in scores.sdr.index else {}
            variants = scores.variants.loc[key] if key in scores.variants.index else {}
            score = (
                f'<p class="score"><span class="sdr">{_number(values.get("estimate"))}</span> dB SDR '
                f'<span class="baseline">mixture {_number(values.get("baseline"))}</span>'
            )
            if not pd.isna(variants.get("sdr_mdx")):
                score += (
                    f'<span class="variants">MDX <span class="mdx">{_number(variants.get("sdr_mdx"))}</span> · '
                    f'SI-SDR <span class="si-sdr">{_number(variants.get("si_sdr"))}</span></span>'
                )
            if clipped := scores.clipped.get(key):
                score += f'<span class="clipped">{clipped:,} samples clipped</span>'
            score += "</p>"
        cells.append(source_figure(name, path, score))
    return track_row(track, cells)


def render_page(
    facts: dict[str, str],
    summary: pd.DataFrame,
    tracks: list[str],
    rows: list[dict[str, str]],
    scores: TrackScores,
    excerpt_seconds: float,
    trained: bool = True,
) -> str:
    """The whole page; every text from the inputs is HTML-escaped. ``trained``: curves to show
    (else the model was given, ``train.pretrained``)."""
    grid = "\n".join(_track_row(track, files, scores) for track, files in zip(tracks, rows))
    training = (
        CURVES if trained else '<p class="note">Not trained here: the weights were imported (train.pretrained).</p>'
    )
    return document(
        f"{facts['Model']} separation results",
        BODY.format(
            facts=facts_list(facts),
            summary=_summary_table(summary),
            definitions=_definitions(summary),
            clipped=_clipped_note(scores.clipped),
            training=training,
            tracks=grid,
            seconds=f"{excerpt_seconds:g}",
        ),
    )


CURVES = '<img class="curves" src="curves.png" alt="Training and validation loss per epoch">'


BODY = """<p class="lead">Conditioned music source separation: one network, told which target to extract,
separates vocals, drums, bass and other from the mixture. The headline scores are museval BSSEval v4
on the test tracks (median over 1-second frames, then over tracks, in dB), as SiSEC 2018 reported
them; <em>mixture</em> scores the unprocessed mixture as the estimate, so the improvement is what
separation gains.</p>
{facts}
<h2>Test scores</h2>
{summary}
<p class="note">SIR, ISR and SAR are the model's. {definitions}</p>
{clipped}
<h2>Training</h2>
{training}
<h2>Listen</h2>
<p class="note">{seconds}-second excerpts. Beside each estimate: its museval SDR on the whole track,
the mixture's, and the MDX and SI-SDR of the whole track.</p>
{tracks}
"""
