"""The ``data`` and ``prepare`` sections (download and prepare), and ``runtime.prepare``."""

from __future__ import annotations

from ..schema import RUNTIME, Section, boolean, choice, fail, integer, list_of, number, one_of, sha256, text
from .sources import SOURCES

MUSDB_SAMPLE_URL = "https://github.com/sigsep/sigsep-mus-db/releases/download/v0.4.0/MUSDB18-7-STEMS.zip"


def check_extra_train(d: dict) -> None:
    roots = d["extra_train"]
    if len(set(roots)) != len(roots):
        fail("data.extra_train", roots, "lists a folder twice; its tracks would be trained on twice as often")


DATA = Section(
    "data",
    {
        "source": ("musdb18", choice(*SOURCES)),
        "root": ("data/musdb18", text()),
        "archive": (None, text(nullable=True)),
        "sha256": (None, sha256()),
        "sample_url": (MUSDB_SAMPLE_URL, text()),
        "allow_insecure_http": (False, boolean()),
        "valid_tracks": (None, list_of(text())),
        "extra_train": ([], list_of(text(), nullable=False)),  # issue 23: own stems, training split only
        "synthetic": {
            "train_tracks": (6, integer(1)),
            "valid_tracks": (2, integer(1)),
            "test_tracks": (2, integer(1)),
            "seconds": (8.0, number(0.5)),
            "seed": (0, integer(0)),
        },
    },
    rules=(check_extra_train,),
)


def synthetic_track_names(split: str, count: int) -> list[str]:
    """Names of the synthetic tracks of a split (here, not in ``synthetic``: params checks use them)."""
    return [f"synthetic {split} {i:03d}" for i in range(count)]


PREPARE = Section("prepare", {"dtype": ("float16", choice("float16", "float32"))})

RUNTIME_PREPARE = Section(
    "runtime.prepare",
    {"jobs": ("auto", one_of(choice("auto"), integer(1), hint="expected auto or a number of worker processes"))},
    kind=RUNTIME,
)
