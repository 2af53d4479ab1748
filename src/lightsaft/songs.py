"""``lightsaft separate``: any songs, any model (ours, an official checkpoint, a published name).

Files of any rate, mono or stereo, wav/flac/mp3/... or a MUSDB ``.stem.mp4``; each song becomes
``<out>/<song>/<target>.wav`` at its own rate and length. Separation itself is
:func:`lightsaft.separation.track.separate_track`. With a page (:mod:`lightsaft.report.song_page`)
the songs go to the model's own folder ``<out>/<model>-<sha8>/``, beside its ``index.html``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .data.audio import AudioError, read_audio, resample, to_stereo, write_audio
from .devices import inference_device
from .model.unet import Separator
from .progress import Progress
from .report.song_page import Excerpt, SongPage
from .separation.track import SeparationError, separate_track
from .spectral import SAMPLE_RATE, TARGETS
from .weights.resolve import ResolvedModel, resolve_model


def open_model(reference: str | Path) -> ResolvedModel:
    """``--model``: any reference :func:`lightsaft.weights.resolve.resolve_model` takes, paths
    relative to the current folder."""
    try:
        return resolve_model(reference, base=Path.cwd())
    except (FileNotFoundError, ValueError) as e:
        raise SeparationError(str(e)) from None


def song_name(path: str | Path) -> str:
    """``a/Song.stem.mp4`` -> ``Song``, ``a/Song.wav`` -> ``Song``."""
    stem = Path(path).stem
    return stem.removesuffix(".stem") or stem


def _writable_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise SeparationError(
            f"{path}: cannot write the output folder: {e.strerror or e}; choose another --out"
        ) from None


def read_song(song: str | Path) -> tuple[np.ndarray, int]:
    """A song file's audio, ``[samples, channels]``, and rate; a ``.stem.mp4`` gives stream 0, its mixture."""
    audio, rate = read_audio(song, stream=0)
    if len(audio) == 0:
        raise AudioError(f"{song}: holds no audio samples")
    return audio, rate


def separate_audio(model: Separator, audio: np.ndarray, rate: int, song: str | Path, **options: Any) -> dict:
    """A song's estimates at its own rate, length and channel count: mono input gives mono
    estimates (the mean of the two channels separated from the duplicated mono signal).
    ``options`` are :func:`separate_track`'s."""
    stereo = resample(to_stereo(audio, song), rate, SAMPLE_RATE)
    estimates = {}
    for target, estimate in separate_track(model, stereo, **options).items():
        estimate = resample(estimate, SAMPLE_RATE, rate)[: len(audio)]
        estimate = np.pad(estimate, ((0, len(audio) - len(estimate)), (0, 0)))
        estimates[target] = estimate.mean(axis=1, keepdims=True) if audio.shape[1] == 1 else estimate
    return estimates


def separate_song(model: Separator, song: str | Path, folder: Path, **options: Any) -> None:
    """One file of any rate, mono or stereo -> ``folder/<target>.wav`` at its own rate and length."""
    audio, rate = read_song(song)
    for target, estimate in separate_audio(model, audio, rate, song, **options).items():
        write_audio(folder / f"{target}.wav", estimate, rate)


def check_targets(targets: Sequence[str]) -> tuple[str, ...]:
    targets = tuple(targets)
    if not targets or any(t not in TARGETS for t in targets):
        raise SeparationError(f"--targets {','.join(targets) or '(none)'}: choose one or more of {', '.join(TARGETS)}")
    return targets


def separate_songs(
    songs: Sequence[str | Path],
    model: ResolvedModel,
    out_dir: str | Path,
    targets: Sequence[str],
    options: dict[str, Any],
    page: Excerpt | None = None,
) -> tuple[list[str], Path | None]:
    """``lightsaft separate``: each song -> ``out_dir/<song>/<target>.wav``; returns the failures
    and, with ``page`` (which part of each song its players play), the page.

    ``options``: :func:`separate_track`'s, validated by the command (the ``separate`` section's
    checks, batch size and device). A song that cannot be read is reported (on stderr, naming
    it) and skipped; the rest still run. Problems that stop everything (the output folder)
    raise SeparationError. With ``page`` the songs go to the model's folder in ``out_dir`` and
    onto its page (:class:`lightsaft.report.song_page.SongPage`).
    """
    out_dir = Path(out_dir)
    _writable_dir(out_dir)
    book = SongPage(out_dir, model, options, page) if page is not None else None
    if book is not None:
        out_dir = book.folder
        _writable_dir(out_dir)
    with inference_device(options["device"]) as dev:
        options = {**options, "targets": tuple(targets), "device": dev}
        failures = _separate_each(model.model, songs, out_dir, options, book)
    return failures, book.index if book is not None and book.index.exists() else None


def _separate_each(
    separator: Separator, songs: Sequence[str | Path], out_dir: Path, options: dict, book: SongPage | None
) -> list[str]:
    failures: list[str] = []
    seen: dict[str, Path] = {}
    with Progress("separate", len(songs), "song") as bar:
        for song in map(Path, songs):
            name = song_name(song)
            try:
                if name in seen:
                    raise SeparationError(
                        f"{song}: writes {out_dir / name}, as {seen[name]} already does; "
                        f"rename one of them or separate them into different --out folders"
                    )
                seen[name] = song
                audio, rate = read_song(song)
                if book is not None:
                    book.excerpt.span(song, len(audio), rate)  # an offset beyond the song: before separating it
                estimates = separate_audio(separator, audio, rate, song, **options)
                for target, estimate in estimates.items():
                    write_audio(out_dir / name / f"{target}.wav", estimate, rate)
                if book is not None:
                    book.add(song, name, audio, rate, estimates)
            except (AudioError, SeparationError, OSError) as e:
                failures.append(str(e))
                bar.write(f"error: {e}")
            bar.advance(name)
    return failures
