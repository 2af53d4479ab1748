"""The seed's demo page for anyone's songs: ``lightsaft separate SONG... --model M --page``.

Like the LightSAFT demo page: the model's name and config above, then a numbered row per song
with players for the original and each estimate (compressed excerpts), and links to the full
files. A model's separations and page live in a folder of their own, ``<out>/<model>-<sha8>/``
(named after the model and its content): separating more songs with the same model adds
rows to its page; another model gets its own folder and page, so pages never mix models (nor do
the full files they link to). ``page.json`` keeps the rows; ``index.html`` is rebuilt from it.
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.audio import AudioError, resample
from ..errors import LightSAFTError
from ..model.unet import count_parameters
from ..paths import file_lock, write_text_atomic
from ..spectral import SAMPLE_RATE
from ..weights.resolve import ResolvedModel
from .blocks import (
    document,
    encode_excerpts,
    facts_list,
    href,
    model_facts,
    source_figure,
    track_row,
    unique_slugs,
)

STATE = "page.json"
STATE_FORMAT = 1


class SongPageError(LightSAFTError, ValueError):
    """A page option is invalid, or the page folder holds something that is not our page."""


@dataclass(frozen=True)
class Excerpt:
    """Which part of each song the players play: ``seconds`` from ``offset`` (or to the end)."""

    seconds: float = 15.0
    offset: float = 0.0
    audio_format: str = "mp3"

    def span(self, song: str | Path, samples: int, rate: int) -> tuple[int, int]:
        """Sample range of the excerpt in a song of ``samples`` at ``rate``."""
        start = round(self.offset * rate)
        if start >= samples:
            raise AudioError(
                f"{song}: --excerpt-offset {self.offset:g} is beyond its end ({samples / rate:.1f} s); lower it"
            )
        return start, min(samples, start + round(self.seconds * rate))


class SongPage:
    """The page of one model in ``<out>/<model>-<sha8>/``; :meth:`add` puts a separated song on it."""

    def __init__(self, out_dir: str | Path, model: ResolvedModel, options: dict, excerpt: Excerpt):
        """``model`` as :func:`lightsaft.weights.resolve.resolve_model` found it, ``options`` the separation's."""
        self.excerpt = excerpt
        self.folder = Path(out_dir) / f"{model.name}-{model.sha256[:8]}"
        self.facts = {
            "Name": model.name,  # the experiment or model name given, or the weights file's
            **({"Given as": model.reference} if model.reference != model.name else {}),
            **model_facts(model.model.params, count_parameters(model.model)),
            "Weights sha256": model.sha256[:16],
            "Separation": f"{options['protocol']}, overlap {options['overlap']:g}, {options['precision']}",
        }

    @property
    def index(self) -> Path:
        return self.folder / "index.html"

    def add(self, song: Path, name: str, audio: np.ndarray, rate: int, estimates: dict[str, np.ndarray]) -> None:
        """Encode the excerpts of ``audio`` (the song at ``rate``) and of its ``estimates`` (at the same
        rate, written to ``<folder>/<name>/<target>.wav``), then rewrite the page with this song's row
        (replacing an earlier row of the same name, in place)."""
        start, stop = self.excerpt.span(song, len(audio), rate)
        sources = {"mixture": audio, **estimates}
        clips = {k: resample(v[start:stop], rate, SAMPLE_RATE) for k, v in sources.items()}
        with file_lock(self.folder / ".page.lock"):  # two runs into the same folder
            rows = self._rows()
            slug = next((r["slug"] for r in rows if r["name"] == name), None) or _free_slug(name, rows)
            files = encode_excerpts(
                self.folder / "excerpts" / slug, self.folder, clips, SAMPLE_RATE, self.excerpt.audio_format
            )
            row = {
                "name": name,
                "slug": slug,
                "excerpts": files,
                "full": {
                    "mixture": os.path.relpath(os.path.abspath(song), self.folder),
                    **{t: f"{name}/{t}.wav" for t in estimates},
                },
                "start": start / rate,
                "stop": stop / rate,
                "length": len(audio) / rate,
            }
            rows = (
                [row if r["name"] == name else r for r in rows]
                if any(r["name"] == name for r in rows)
                else [*rows, row]
            )
            state = {"format": STATE_FORMAT, "model": self.facts, "songs": rows}
            write_text_atomic(self.folder / STATE, json.dumps(state, indent=1, ensure_ascii=False) + "\n")
            write_text_atomic(self.index, render(self.facts, rows))

    def _rows(self) -> list[dict[str, Any]]:
        path = self.folder / STATE
        if not path.exists():
            return []
        try:
            state = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise SongPageError(f"{path}: not valid JSON ({e}); move the folder away to start a new page") from None
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise SongPageError(f"{path}: not a songs page of this version; move the folder away to start a new page")
        return state["songs"]


def _free_slug(name: str, rows: list[dict[str, Any]]) -> str:
    taken = [r["name"] for r in rows]
    return unique_slugs([*taken, name])[name]


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


def render(facts: dict[str, str], rows: list[dict[str, Any]]) -> str:
    """The page: the model above, a numbered row per song; every text from the inputs is escaped."""
    sections = []
    for number, row in enumerate(rows, 1):
        figures = [
            source_figure(source, src, f'<a class="full" href="{href(row["full"][source])}">full file</a>')
            for source, src in row["excerpts"].items()
        ]
        span = f"{_clock(row['start'])}–{_clock(row['stop'])} of {_clock(row['length'])}"
        heading = f'<span class="num">{number}.</span>{html.escape(row["name"])}<span class="when">{span}</span>'
        sections.append(track_row(row["name"], figures, heading))
    body = (
        '<p class="lead">Songs separated into vocals, drums, bass and other by one conditioned network. '
        "The players play an excerpt of each song (its span beside the title); the links open the full "
        "files: the original, and the estimates beside this page.</p>\n"
        f"{facts_list(facts)}\n<h2>Songs</h2>\n" + "\n".join(sections)
    )
    return document(f"{facts['Name']}: separated songs", body)
