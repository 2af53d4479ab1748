"""The ``separate`` section (how a track is cut into model windows and put back together) and
``runtime.separate``; the same checks serve the stage's params and ``lightsaft separate``'s options."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from ..schema import RUNTIME, Section, choice, device_name, fail, integer, number, one_of

PROTOCOLS = ("crossfade", "official")
FORMATS = ("wav16", "wav24", "float", "flac", "mp3")  # of separated files (separation/writer.py)
MP3_BITRATES = (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)  # MPEG-1 layer III, kbit/s
MP3_BITRATE = 320
PRECISIONS = ("float32", "bf16")
AUTO = "auto"  # batch size from the memory budget (the default of the stage and the CLI alike)
OFFICIAL_MAX_OVERLAP = 0.5  # the official chunks halve where two overlap: more than half would count thrice


def dotted(key: str) -> str:
    return f"separate.{key}"


def check_protocol(s: Mapping[str, Any], model: Mapping[str, Any] | None, label: Callable[[str], str] = dotted) -> None:
    """What each protocol can do, and with this model's windows (``hop_length * (num_frame - 1)``
    samples); without a ``model`` (the command line, before the model is found), what it can do."""
    if s["protocol"] != "official":
        return
    if s["overlap"] > OFFICIAL_MAX_OVERLAP:
        fail(
            label("overlap"),
            s["overlap"],
            f"the official protocol takes 0 to {OFFICIAL_MAX_OVERLAP} (its chunks halve where two overlap); "
            f"use the crossfade protocol for more",
        )
    if model is None:
        return
    hop, window = model["hop_length"], model["hop_length"] * (model["num_frame"] - 1)
    per_hop = math.ceil(s["min_trim"] / hop)
    if per_hop < 2:
        fail(
            label("min_trim"),
            s["min_trim"],
            f"the official protocol trims whole hops, at least two: min_trim must be > {hop} samples at "
            f"hop_length {hop} (the official default is 5000)",
        )
    trim = per_hop * hop
    if window - 2 * trim <= 0:
        fail(
            label("min_trim"),
            s["min_trim"],
            f"the official protocol trims {trim} samples at each side of a {window}-sample window "
            f"(hop_length * (num_frame - 1)), which leaves nothing; lower it or use the crossfade protocol",
        )


SEPARATE = Section(
    "separate",
    {
        "protocol": ("crossfade", choice(*PROTOCOLS)),
        "overlap": (0.5, number(0, 0.9)),
        "min_trim": (5000, integer(0)),
        "precision": ("float32", choice(*PRECISIONS)),
    },
    cross_rules=(lambda p: check_protocol(p["separate"], p["model"]),),
)

RUNTIME_SEPARATE = Section(
    "runtime.separate",
    {
        "batch_size": (AUTO, one_of(choice(AUTO), integer(1), hint="expected auto or a number of pairs")),
        "device": ("auto", device_name()),
    },
    kind=RUNTIME,
)

# The files ``lightsaft separate`` writes (the stage always writes 16-bit FLAC); in no params file.
OUTPUT = Section(
    "output",
    {
        "format": ("wav16", choice(*FORMATS)),
        "mp3_bitrate": (MP3_BITRATE, choice(*MP3_BITRATES)),
    },
    kind=RUNTIME,
)
