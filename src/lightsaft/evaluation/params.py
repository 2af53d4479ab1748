"""The ``evaluate`` section (which BSSEval v4 implementation scores the estimates) and
``runtime.evaluate``."""

from __future__ import annotations

from ..schema import RUNTIME, Section, choice, device_name, integer

ENGINES = ("fast", "museval")  # fast: ours (lightsaft.bsseval), museval's numbers sooner; museval: the reference

EVALUATE = Section("evaluate", {"engine": ("fast", choice(*ENGINES))})

RUNTIME_EVALUATE = Section(
    "runtime.evaluate",
    {
        "jobs": (2, integer(1)),
        "device": ("auto", device_name()),
    },
    kind=RUNTIME,
)
