"""Shared entry point of the ``pipeline/*.py`` stage scripts: params in, clean errors out.

A user mistake (bad params, missing data, unreadable audio, wrong weights) or a full disk ends
the stage with one ``error: ...`` line and exit code 2, not a traceback; Ctrl+C / SIGTERM exit
with 130 / 143 (a Ctrl+C during training exits 1: Lightning handles it and calls ``sys.exit(1)``).
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import signal
import sys
from collections.abc import Callable
from typing import Any

from .config import load_params
from .errors import LightSAFTError

USER_ERRORS = (LightSAFTError, FileNotFoundError, PermissionError, IsADirectoryError)


class Terminated(Exception):
    """SIGTERM, turned into an exception so that ``finally`` blocks and temp-file cleanup run."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def run_stage(
    name: str,
    body: Callable[[dict[str, Any], argparse.Namespace], Any],
    argv: list[str] | None = None,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    handle_sigterm: bool = True,
) -> None:
    """Parse ``--params``, validate the params file and run ``body(params, args)``.

    ``handle_sigterm=False`` leaves SIGTERM to the stage (Lightning stops at a batch boundary
    and the train stage raises :class:`Terminated` itself).
    """
    parser = argparse.ArgumentParser(prog=f"pipeline/{name}.py", description=f"the {name} stage")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    if add_arguments:
        add_arguments(parser)
    args = parser.parse_args(argv)
    if handle_sigterm and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        body(load_params(args.params), args)
    except KeyboardInterrupt:
        print(f"\n{name}: interrupted", file=sys.stderr)
        sys.exit(130)
    except Terminated:
        print(f"\n{name}: terminated", file=sys.stderr)
        sys.exit(143)
    except USER_ERRORS as e:
        print(f"error: {name}: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"error: {name}: {e}; free some space and run the stage again", file=sys.stderr)
        sys.exit(2)
