"""The ``report`` section: what the results page plays (the same checks serve ``lightsaft separate --page``)."""

from __future__ import annotations

from ..schema import Section, choice, number

FORMATS = ("mp3", "ogg", "wav")  # of the excerpts: browsers play all three; mp3 and ogg keep the page small

REPORT = Section(
    "report",
    {
        "excerpt_seconds": (15.0, number(0, lo_open=True)),
        "excerpt_offset": (0.0, number(0)),
        "audio_format": ("mp3", choice(*FORMATS)),
    },
)
