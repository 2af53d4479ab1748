"""Progress of the long steps: a bar on a terminal, one plain line per item otherwise.

DVC queue logs, CI and ``| tee`` are not terminals: there a bar's carriage-return redraws become
one unreadable line, so each finished item is printed as a line of its own instead.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


class Progress:
    """Count finished items (``advance``), with an optional note such as ``1.2 GB written``.

    ``lines=False``: no plain lines when not on a terminal (fine-grained steps inside an item,
    such as the chunks of one song, would flood a log).
    """

    def __init__(self, desc: str, total: int | None, unit: str = "item", lines: bool = True, leave: bool = True):
        self.desc, self.total, self.unit, self.done, self.lines = desc, total, unit, 0, lines
        self.started = time.monotonic()
        self.bar = tqdm(total=total, desc=desc, unit=unit, leave=leave) if sys.stderr.isatty() else None

    def advance(self, item: str = "", note: str = "") -> None:
        self.done += 1
        if self.bar is not None:
            if note:
                self.bar.set_postfix_str(note, refresh=False)
            self.bar.update(1)
            return
        if not self.lines:
            return
        count = f"{self.done}/{self.total}" if self.total else str(self.done)
        details = ", ".join(x for x in (item, note, f"{time.monotonic() - self.started:.0f} s") if x)
        print(f"{self.desc}: {count} {self.unit}s ({details})", file=sys.stderr, flush=True)

    def write(self, message: str) -> None:
        """A message that does not break the bar."""
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(items: Iterable[T], desc: str, unit: str = "item", total: int | None = None) -> Iterator[T]:
    """Iterate ``items``, reporting each one as it finishes."""
    items = list(items) if total is None else items
    with Progress(desc, total if total is not None else len(items), unit) as bar:
        for item in items:
            yield item
            bar.advance(str(item) if isinstance(item, str) else "")
