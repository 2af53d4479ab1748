"""The ``evaluate`` section (which BSSEval v4 implementation scores the estimates, and which test
tracks) and ``runtime.evaluate``."""

from __future__ import annotations

from typing import Any

from ..data.params import synthetic_track_names
from ..schema import RUNTIME, Section, choice, device_name, fail, integer, list_of, text

ENGINES = ("fast", "museval")  # fast: ours (lightsaft.bsseval), museval's numbers sooner; museval: the reference


def check_tracks(values: dict[str, Any]) -> None:
    """``evaluate.tracks``: null (every test track) or a non-empty list of distinct names."""
    tracks = values["tracks"]
    if tracks is not None and not tracks:
        fail("evaluate.tracks", tracks, "an empty list scores nothing; null scores every test track")
    if tracks is not None and len(set(tracks)) != len(tracks):
        fail("evaluate.tracks", tracks, "names a track twice")


def check_known_tracks(params: dict[str, Any]) -> None:
    """Where the test tracks are known before any data is read (the synthetic set), the names
    must be among them; otherwise the evaluate stage refuses an unknown name, naming it."""
    tracks, data = params["evaluate"]["tracks"], params["data"]
    if tracks is None or data["source"] != "synthetic":
        return
    known = synthetic_track_names("test", data["synthetic"]["test_tracks"])
    if unknown := [t for t in tracks if t not in known]:
        fail(
            "evaluate.tracks",
            tracks,
            f"{', '.join(map(repr, unknown))} not among the synthetic test tracks ({', '.join(map(repr, known))})",
        )


EVALUATE = Section(
    "evaluate",
    {
        "engine": ("fast", choice(*ENGINES)),
        "tracks": (None, list_of(text())),
    },
    rules=(check_tracks,),
    cross_rules=(check_known_tracks,),
)

RUNTIME_EVALUATE = Section(
    "runtime.evaluate",
    {
        "jobs": (2, integer(1)),
        "device": ("auto", device_name()),
    },
    kind=RUNTIME,
)
