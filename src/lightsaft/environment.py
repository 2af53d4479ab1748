"""Imported first by every entry point: without the project's packages, one line says what to do.

The DVC stages run whatever ``python`` is first on PATH. Run by an interpreter that lacks our
dependencies (``.venv/bin/dvc repro`` without activating the environment, say), a stage would
die in its first import with a traceback about some module; this check, stdlib only, turns that
into one line instead. The packages are the ``dependencies`` of pyproject.toml.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
IMPORT_NAMES = {"pyyaml": "yaml"}  # distributions whose module is named otherwise (else: - -> _)


def missing() -> list[str]:
    """The dependencies this interpreter cannot import (none when pyproject.toml is not beside us:
    an installed package, whose installer checked them)."""
    if not PYPROJECT.is_file():
        return []
    requirements = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    names = [re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements]
    modules = [IMPORT_NAMES.get(name, name.replace("-", "_")) for name in names]
    return [m for m in modules if importlib.util.find_spec(m) is None]


def require() -> None:
    if lacking := missing():
        print(
            f"error: {sys.argv[0] or 'lightsaft'}: {sys.executable} lacks the project's packages "
            f"({', '.join(lacking)}): activate its environment first (source .venv/bin/activate; "
            f"`make setup` creates it), then run the command again",
            file=sys.stderr,
        )
        sys.exit(2)


require()
