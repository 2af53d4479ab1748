"""Errors a user can fix, what they may show, and the one handler that reports them.

Stages (``pipeline/*.py`` through :mod:`lightsaft.stage`) and the ``lightsaft`` command report a
user mistake (bad params, missing data, unreadable audio, wrong weights) or a full disk as one
``error: ...`` line with exit code 2, not a traceback; Ctrl+C and SIGTERM exit with 130 and 143.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import re
import sys
from collections.abc import Callable


class LightSAFTError(Exception):
    """A problem with the user's input, named in the message together with what to do."""


class ConfigError(LightSAFTError, ValueError):
    """A parameter is unknown, of the wrong type or impossible."""


class DataError(LightSAFTError, RuntimeError):
    """The data set is missing, incomplete, or not what the pipeline needs."""


class WeightsError(LightSAFTError, ValueError):
    """A weights file or state_dict that does not fit (wrong file, other config, unsafe pickle)."""


class Terminated(Exception):
    """SIGTERM, turned into an exception so that ``finally`` blocks and temp-file cleanup run."""


USER_ERRORS = (LightSAFTError, FileNotFoundError, PermissionError, IsADirectoryError)
EXIT_USER_ERROR, EXIT_INTERRUPTED, EXIT_TERMINATED = 2, 130, 143


def reported(body: Callable[[], int | None], prog: str | None = None) -> int:
    """Run ``body`` and return its exit code; a user error, an interrupt or a full disk instead
    prints one line (naming ``prog``, e.g. the stage) and returns 2, 130 or 143."""
    where = f"{prog}: " if prog else ""
    try:
        return body() or 0
    except KeyboardInterrupt:
        print(f"\n{where}interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        print(f"\n{where}terminated", file=sys.stderr)
        return EXIT_TERMINATED
    except USER_ERRORS as e:
        print(f"error: {where}{e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"error: {where}{e}; free some space and run it again", file=sys.stderr)
        return EXIT_USER_ERROR


_SECRET_QUERY = re.compile(
    r"(?i)([?&][^=&#\s]*(?:token|key|secret|passw|signature|sig|credential|auth)[^=&#\s]*=)[^&#\s]+"
)


def redact(uri: str) -> str:
    """Hide credentials in a URI or URL before it is printed or logged: ``https://user:token@host``
    -> ``https://***@host``, and secret query values (``?token=...``, signatures) -> ``***``."""
    return _SECRET_QUERY.sub(r"\1***", re.sub(r"(?<=://)[^/@\s]+@", "***@", uri))
