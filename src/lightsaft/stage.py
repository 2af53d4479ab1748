"""The stage contract, shared by every ``pipeline/<stage>.py``.

The rule: library functions compute and return; they take every path they read or write as an
argument (big outputs such as estimates are streamed into the folder they are given). Only the
stage entry point knows the DVC paths (from :mod:`lightsaft.layout`), and it writes the small
outputs (metrics, plots, run records) and the MLflow records.

:func:`run_stage` parses ``--params``, validates the whole params file (a typo anywhere fails
at once), hands the stage only the result-changing params dvc.yaml declares for it plus its own
``runtime`` settings, and reports errors as :func:`lightsaft.errors.reported` does.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Mapping
from typing import Any

from .config import load_params
from .errors import Terminated, reported
from .layout import STAGES


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def stage_params(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The params stage ``name`` may read: its declared sections and keys, the recording sections
    it is handed, and ``runtime.<name>``."""
    view: dict[str, Any] = {}
    for entry in (*STAGES[name].params, *STAGES[name].records):
        section, _, key = entry.partition(".")
        if key:
            view.setdefault(section, {})[key] = params[section][key]
        else:
            view[section] = params[section]
    view["runtime"] = {name: params["runtime"][name]} if name in params["runtime"] else {}
    return view


def run_stage(
    name: str,
    body: Callable[[dict[str, Any], argparse.Namespace], Any],
    argv: list[str] | None = None,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    handle_sigterm: bool = True,
) -> None:
    """Run ``body(params, args)`` with the params of stage ``name`` (see :func:`stage_params`).

    ``handle_sigterm=False`` leaves SIGTERM to the stage (Lightning stops at a batch boundary
    and the train stage raises :class:`~lightsaft.errors.Terminated` itself).
    """
    parser = argparse.ArgumentParser(prog=f"pipeline/{name}.py", description=f"the {name} stage")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    if add_arguments:
        add_arguments(parser)
    args = parser.parse_args(argv)
    if handle_sigterm and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)
    code = reported(lambda: body(stage_params(name, load_params(args.params)), args), prog=name)
    if code:
        sys.exit(code)
