"""``lightsaft separate``: any songs, any model (ours, an official checkpoint, a published name).

Files of any rate, mono or stereo, wav/flac/mp3/... or a MUSDB ``.stem.mp4``; each song becomes
``<out>/<song>/<target>.<ext>`` at its own rate, length and channel count, in the chosen format
(:mod:`lightsaft.separation.writer`). With ``two_stems`` only that target goes through the model,
and ``no_<target>`` is the song minus its estimate (as demucs' ``--two-stems``). A song streams
through in blocks: decoded (or read in place), resampled to 44.1 kHz, separated
(:func:`lightsaft.separation.track.separate_stream`), resampled back and encoded, so an hour-long
file takes the memory of a short one. With a page (:mod:`lightsaft.report.song_page`) the songs
go to the model's own folder ``<out>/<model>-<sha8>/``, beside its ``index.html``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .data.audio import AudioError
from .data.stream import BlockResampler, ResampledSource, Source, StereoSource, open_audio
from .devices import inference_device
from .model.unet import Separator
from .progress import Progress
from .report.song_page import Excerpt, SongPage
from .separation.params import MP3_BITRATE
from .separation.track import SeparationError, separate_stream
from .separation.writer import AudioWriter
from .spectral import SAMPLE_RATE, TARGETS
from .weights.resolve import ResolvedModel, resolve_model


@dataclass(frozen=True)
class Output:
    """What is written per song: ``targets``' estimates, or, with ``two_stems``, that target and
    ``no_<target>``; in ``format`` (:data:`lightsaft.separation.params.FORMATS`)."""

    targets: tuple[str, ...] = TARGETS
    two_stems: str | None = None
    format: str = "wav16"
    mp3_bitrate: int = MP3_BITRATE

    @property
    def separated(self) -> tuple[str, ...]:
        """The targets that go through the model."""
        return (self.two_stems,) if self.two_stems else self.targets

    @property
    def names(self) -> tuple[str, ...]:
        return (self.two_stems, f"no_{self.two_stems}") if self.two_stems else self.targets


@dataclass
class Song:
    """A separated song: its rate and length, the files written with the samples each clipped,
    and, when asked for, the excerpt of the song and of each output (``clips``)."""

    rate: int
    frames: int
    files: dict[str, Path] = field(default_factory=dict)
    clipped: dict[str, int] = field(default_factory=dict)
    clips: dict[str, np.ndarray] = field(default_factory=dict)


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


def check_targets(targets: Sequence[str] | None, two_stems: str | None = None) -> tuple[str, ...]:
    """``--targets`` (all four when not given) or ``--two-stems``, not both."""
    if two_stems is not None:
        if targets is not None:
            raise SeparationError("--two-stems and --targets: give one of them (--two-stems vocals writes vocals and "
                                  "no_vocals)")  # fmt: skip
        if two_stems not in TARGETS:
            raise SeparationError(f"--two-stems {two_stems}: choose one of {', '.join(TARGETS)}")
        return (two_stems,)
    targets = TARGETS if targets is None else tuple(targets)
    if not targets or any(t not in TARGETS for t in targets):
        raise SeparationError(f"--targets {','.join(targets) or '(none)'}: choose one or more of {', '.join(TARGETS)}")
    return targets


def separate_song(
    model: Separator, song: str | Path, folder: Path, output: Output, options: dict, excerpt: Excerpt | None = None
) -> Song:
    """One file of any rate, mono or stereo -> ``folder/<name>.<ext>`` for each of ``output.names``,
    at its own rate, length and channel count (mono: the mean of the two channels separated from
    the duplicated mono signal). ``options``: :func:`separate_stream`'s, but the targets."""
    with open_audio(song) as source:
        if source.frames == 0:
            raise AudioError(f"{song}: holds no audio samples")
        span = excerpt.span(song, source.frames, source.rate) if excerpt else None  # an offset beyond the song: now
        result = Song(source.rate, source.frames)
        stereo = ResampledSource(StereoSource(source, song), SAMPLE_RATE)
        back = [BlockResampler(SAMPLE_RATE, source.rate, stereo.frames) for _ in output.separated]
        pieces: dict[str, list[np.ndarray]] = {name: [] for name in ("mixture", *output.names)} if span else {}
        with ExitStack() as files:
            writers = {
                name: files.enter_context(
                    AudioWriter(folder, name, source.rate, source.channels, output.format, output.mp3_bitrate)
                )
                for name in output.names
            }
            done = 0  # song samples written
            for block in separate_stream(model, stereo, output.separated, **options):
                estimates = [resampler.push(audio) for resampler, audio in zip(back, block)]
                count = min(len(estimates[0]), source.frames - done)
                if count > 0:
                    _write(writers, _outputs(source, output, estimates, done, count), done, span, pieces)
                    done += count
        result.files = {name: writer.path for name, writer in writers.items()}
        result.clipped = {name: writer.clipped for name, writer in writers.items()}
        if span:
            result.clips = {"mixture": source.read(*span), **{k: np.concatenate(v) for k, v in pieces.items() if v}}
    return result


def _outputs(source: Source, output: Output, estimates: list[np.ndarray], done: int, count: int) -> dict:
    """The output blocks of song samples ``[done, done + count)``, in the song's channels."""
    blocks = {target: e[:count] for target, e in zip(output.separated, estimates)}
    if source.channels == 1:
        blocks = {target: e.mean(axis=1, keepdims=True) for target, e in blocks.items()}
    if output.two_stems:
        blocks[f"no_{output.two_stems}"] = source.read(done, done + count) - blocks[output.two_stems]
    return blocks


def _write(writers: dict, blocks: dict, done: int, span: tuple[int, int] | None, pieces: dict) -> None:
    for name, audio in blocks.items():
        writers[name].write(audio)
        if span and done < span[1] and done + len(audio) > span[0]:
            pieces[name].append(audio[max(0, span[0] - done) : span[1] - done])


def separate_songs(
    songs: Sequence[str | Path],
    model: ResolvedModel,
    out_dir: str | Path,
    output: Output,
    options: dict[str, Any],
    page: Excerpt | None = None,
) -> tuple[list[str], Path | None]:
    """``lightsaft separate``: each song -> ``out_dir/<song>/<name>.<ext>``; returns the failures
    and, with ``page`` (which part of each song its players play), the page.

    ``options``: :func:`separate_stream`'s, validated by the command (the ``separate`` section's
    checks, batch size and device). A song that cannot be read is reported (on stderr, naming
    it) and skipped; the rest still run. Problems that stop everything (the output folder)
    raise SeparationError. With ``page`` the songs go to the model's folder in ``out_dir`` and
    onto its page (:class:`lightsaft.report.song_page.SongPage`). Files with clipped samples are
    named on stderr, with how many.
    """
    out_dir = Path(out_dir)
    _writable_dir(out_dir)
    book = SongPage(out_dir, model, options, page) if page is not None else None
    if book is not None:
        out_dir = book.folder
        _writable_dir(out_dir)
    with inference_device(options["device"]) as dev:
        failures = _separate_each(model.model, songs, out_dir, output, {**options, "device": dev}, book)
    return failures, book.index if book is not None and book.index.exists() else None


def _separate_each(
    separator: Separator,
    songs: Sequence[str | Path],
    out_dir: Path,
    output: Output,
    options: dict,
    book: SongPage | None,
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
                result = separate_song(separator, song, out_dir / name, output, options, book.excerpt if book else None)
                for target, count in result.clipped.items():
                    if count:
                        bar.write(f"warning: {result.files[target]}: {count} samples clipped to [-1, 1]")
                if book is not None:
                    book.add(song, name, result.clips, result.rate, result.frames, result.files)
            except (AudioError, SeparationError, OSError) as e:
                failures.append(str(e))
                bar.write(f"error: {e}")
            bar.advance(name)
    return failures
