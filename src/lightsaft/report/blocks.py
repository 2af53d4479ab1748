"""Building blocks of our offline pages (the test-set report, the songs page), in the style of the
LightSAFT demo page: one stylesheet, a header of facts, a row of players per track.

A page is one ``index.html`` with inline CSS, no scripts and no external resources, so it opens
from disk, offline, and as an MLflow artifact; its audio are small compressed excerpts beside it.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd

from ..data.audio import write_audio

VARIANTS = {"lightsaft": "LightSAFT", "lasaft": "LaSAFT"}
LABELS = {"mixture": "Original"}  # a source's caption: its name, capitalized, unless named here


def unique_slugs(names: list[str]) -> dict[str, str]:
    """File-system and URL safe folder names, distinct even when two names differ only in
    punctuation or case."""
    slugs: dict[str, str] = {}
    for name in names:
        base = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "track"
        slug, n = base, 1
        while slug in slugs.values():
            n += 1
            slug = f"{base}-{n}"
        slugs[name] = slug
    return slugs


def number(value: Any, spec: str = ".2f") -> str:
    return "–" if value is None or pd.isna(value) else format(float(value), spec)


def model_facts(params: dict[str, Any], param_count: int) -> dict[str, str]:
    """The model's config, as the header shows it."""
    return {
        "Model": VARIANTS[params["variant"]],
        "dk": str(params["dk"]),
        "TDFs": str(params["num_tdfs"]),
        "Parameters": f"{param_count:,}",
        "STFT": f"{params['n_fft']} / hop {params['hop_length']}",
    }


def href(path: str | Path) -> str:
    """A relative path as a link target (spaces, ``#``, ``?`` in file names escaped)."""
    return html.escape(quote(Path(path).as_posix()))


def encode_excerpts(
    folder: Path, base: Path, audio: dict[str, np.ndarray], rate: int, audio_format: str
) -> dict[str, str]:
    """Each ``[samples, channels]`` excerpt -> ``folder/<name>.<format>``; returns name -> path
    relative to ``base`` (the page's folder). Samples beyond [-1, 1] are clipped, as a player would."""
    folder.mkdir(parents=True, exist_ok=True)
    subtype = "PCM_16" if audio_format == "wav" else None  # browsers play 16-bit PCM, not float wav
    relative = {}
    for name, wave in audio.items():
        path = folder / f"{name}.{audio_format}"
        write_audio(path, np.clip(wave, -1.0, 1.0), rate, subtype=subtype)
        relative[name] = path.relative_to(base).as_posix()
    return relative


def facts_list(facts: dict[str, str]) -> str:
    items = "".join(f"<div><dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd></div>" for k, v in facts.items())
    return f'<dl class="facts">{items}</dl>'


def source_figure(name: str, src: str, below: str = "") -> str:
    """One player: the source's caption, its excerpt (``src``, relative), then ``below`` (HTML)."""
    label = LABELS.get(name, name.capitalize())
    return (
        f'<figure class="source" data-source="{html.escape(name)}"><figcaption>{html.escape(label)}</figcaption>'
        f'<audio controls preload="metadata" src="{href(src)}"></audio>{below}</figure>'
    )


def track_row(name: str, figures: list[str], heading: str | None = None) -> str:
    """A track's row of players; ``heading`` (HTML) defaults to the escaped name."""
    title = heading if heading is not None else html.escape(name)
    return (
        f'<section class="track" data-track="{html.escape(name)}"><h3>{title}</h3>'
        f'<div class="sources">{"".join(figures)}</div></section>'
    )


def document(title: str, body: str) -> str:
    """The whole page: ``title`` (text, escaped here) and ``body`` (HTML)."""
    return PAGE.format(title=html.escape(title), style=STYLE, body=body)


STYLE = """
body { margin: 0; background: #f6f7f9; color: #1d2330;
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 28px 24px 48px; }
h1 { font-size: 30px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 36px 0 10px; border-bottom: 1px solid #d8dce3; padding-bottom: 4px; }
h3 { font-size: 16px; margin: 0 0 10px; }
h3 span.num { color: #6b7385; margin-right: 6px; }
h3 span.when { font-weight: 400; font-size: 13px; color: #6b7385; margin-left: 8px; }
p.lead { color: #4a5263; max-width: 62em; margin: 0 0 18px; }
dl.facts { display: flex; flex-wrap: wrap; gap: 8px; margin: 0; }
dl.facts div { background: #fff; border: 1px solid #dde1e8; border-radius: 6px; padding: 6px 12px; }
dl.facts dt { font-size: 11px; text-transform: uppercase; letter-spacing: .05em; color: #6b7385; }
dl.facts dd { margin: 0; font-weight: 600; }
table.summary { border-collapse: collapse; background: #fff; font-variant-numeric: tabular-nums; }
table.summary th, table.summary td { padding: 6px 16px; border-bottom: 1px solid #e4e7ec; text-align: right; }
table.summary thead th { background: #eef1f5; font-size: 13px; }
table.summary tbody th { text-align: left; }
table.summary tr.mean { border-top: 2px solid #b9c0cc; background: #fafbfc; }
p.note { font-size: 13px; color: #6b7385; margin: 6px 0 0; }
img.curves { max-width: 100%; background: #fff; border: 1px solid #dde1e8; border-radius: 6px; }
section.track { background: #fff; border: 1px solid #dde1e8; border-radius: 8px; padding: 14px 16px;
                margin: 0 0 14px; }
div.sources { display: grid; grid-template-columns: repeat(auto-fit, minmax(200px, 1fr)); gap: 12px; }
figure.source { margin: 0; }
figure.source[data-source="mixture"] figcaption { color: #3465a4; }
figcaption { font-weight: 600; font-size: 14px; margin-bottom: 4px; }
audio { width: 100%; height: 36px; }
p.score { margin: 4px 0 0; font-size: 14px; font-variant-numeric: tabular-nums; }
span.sdr { font-weight: 700; }
span.baseline { display: block; font-size: 12px; color: #6b7385; }
span.variants { display: block; font-size: 12px; color: #6b7385; }
span.clipped { display: block; font-size: 12px; color: #a4400c; }
a.full { font-size: 12px; color: #3465a4; }
"""

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<main>
<h1>{title}</h1>
{body}
</main>
</body>
</html>
"""
