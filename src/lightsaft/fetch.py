"""Resumable HTTP downloads that refuse to be downgraded to plain http (data sets, published models).

An interrupted transfer keeps its ``.part`` file; the next call continues it with an HTTP Range
request (or starts over when the server ignores ranges). Integrity is the caller's: a sha256.
"""

from __future__ import annotations

import errno
import http.client
import shutil
import urllib.request
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlparse

from tqdm import tqdm

from .errors import DataError, redact

CHUNK = 1 << 20


class _NoDowngrade(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but never from https to plain http (unless allowed)."""

    def __init__(self, allow_http: bool):
        self.allow_http = allow_http

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        _check_scheme(newurl, self.allow_http)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _check_scheme(url: str, allow_http: bool) -> None:
    scheme = urlparse(url).scheme
    if scheme == "http" and not allow_http:
        raise DataError(
            f"{redact(url)}: plain http is refused (the data could be altered in transit); use "
            f"https, or set data.allow_insecure_http=true for a local test server"
        )
    if scheme not in ("http", "https"):
        raise DataError(f"{redact(url)}: unsupported URL scheme {scheme!r}; use https or a local path")


def fetch(url: str, dest: str | Path, allow_insecure_http: bool = False, timeout: float = 60) -> Path:
    """Download ``url`` to ``dest`` with a progress bar, resuming ``dest.part`` when present.

    An interrupted transfer keeps the ``.part`` file and raises; calling again continues it with
    an HTTP Range request (or starts over when the server ignores ranges).
    """
    dest = Path(dest)
    if dest.is_file():
        return dest
    _check_scheme(url, allow_insecure_http)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    opener = urllib.request.build_opener(_NoDowngrade(allow_insecure_http))
    try:
        with opener.open(request, timeout=timeout) as response:
            resumed = response.headers.get("Content-Range", "").startswith(f"bytes {offset}-")
            if response.status != 206 or not resumed:
                offset = 0  # the server sent the whole file
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length is not None else None
            free = shutil.disk_usage(dest.parent).free
            if length is not None and int(length) > free:
                raise DataError(
                    f"{dest.parent}: {int(length) / 1e6:,.1f} MB still to download but "
                    f"{free / 1e6:,.1f} MB free; free some space, then run the download stage again"
                )
            with (
                open(part, "ab" if offset else "wb") as f,
                tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=dest.name) as bar,
            ):
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
    except HTTPError as e:
        if e.code == 416 and offset and e.headers.get("Content-Range") == f"bytes */{offset}":
            part.rename(dest)  # the previous run had received every byte
            return dest
        raise DataError(f"{redact(url)}: HTTP {e.code} {e.reason}") from None
    except (URLError, OSError, http.client.HTTPException) as e:
        raise DataError(_interrupted(url, part, e)) from None
    if total is not None and part.stat().st_size != total:
        raise DataError(_interrupted(url, part, f"{part.stat().st_size} of {total} bytes received"))
    part.rename(dest)
    return dest


def _interrupted(url: str, part: Path, why: Any) -> str:
    got = part.stat().st_size if part.is_file() else 0
    full = isinstance(why, OSError) and why.errno in (errno.ENOSPC, errno.EDQUOT)
    return (
        f"{redact(url)}: download interrupted after {got} bytes ({why}); "
        f"{'free some space on that disk, then ' if full else ''}run the download stage again "
        f"to resume from {part}"
    )
