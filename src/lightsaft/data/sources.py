"""The data sources (``data.source``): what each one is, how its tracks are laid out, where a user
gets it. Everything the pipeline knows about a particular source lives here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    name: str
    layout: str  # "stems": train/ and test/ hold <track>.stem.mp4; "wav": <track>/{mixture,...}.wav folders
    description: str
    access: str | None = None  # where a user requests the data set (access-restricted releases)
    fetch: str | None = None  # the data param holding a URL this source is downloaded from by default
    generated: bool = False  # written by the pipeline itself (no user data)

    @property
    def layout_text(self) -> str:
        if self.layout == "stems":
            return "train/*.stem.mp4 and test/*.stem.mp4"
        return "train/<track>/{mixture,vocals,drums,bass,other}.wav and test/..."

    def missing_message(self, root: str) -> str:
        """How to obtain this (access-restricted) release, and what to use instead."""
        return (
            f"{self.name} not found at data.root = {root!r}. The full data set is access-restricted: "
            f"request it on {self.access}, then unzip it so that {root}/{self.layout_text} exist (or set "
            f"data.root to the .zip, or data.archive to the URL you were granted, with data.sha256). Without "
            f"it, use data.source=musdb18-sample (the public 7-second previews, downloaded automatically) "
            f"or data.source=synthetic (an offline demo set)."
        )


SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source("musdb18", "stems", "MUSDB18 (stem.mp4, 4.4 GB)", access="https://zenodo.org/records/1117372"),
        Source("musdb18hq", "wav", "MUSDB18-HQ (wav, 22 GB)", access="https://zenodo.org/records/3338373"),
        Source("musdb18-sample", "stems", "the public 7-second MUSDB18 previews", fetch="sample_url"),
        Source("synthetic", "wav", "a deterministic MUSDB-shaped toy set (offline demo, tests)", generated=True),
    )
}
