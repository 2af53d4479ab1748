"""Download faults beyond tests/test_download.py (dropped connection, wrong checksum, unsafe
archives are there): a full disk, a kept archive changed on disk, redirects away from http(s),
secrets in the URL."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import urllib.request
from collections import namedtuple
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from helpers import DUMMY, sample_params

from lightsaft import fetch as dl
from lightsaft.download import download
from lightsaft.errors import DataError


@pytest.fixture(autouse=True)
def project(tmp_path, monkeypatch):
    """Each test is its own project: the download locks go to <tmp_path>/.lightsaft, not the repository's."""
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))


def _disk_fills_after(limit: int):
    """``open`` for download.py whose ``.part`` files hold at most ``limit`` bytes, as on a full disk."""
    real_open = open

    class FullDisk:
        def __init__(self, file):
            self.file = file

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, data: bytes) -> int:
            room = limit - self.file.tell()
            self.file.write(data[:room])
            if len(data) > room:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.file.name)
            return len(data)

    def opener(path, mode="r", *args, **kwargs):
        file = real_open(path, mode, *args, **kwargs)
        return FullDisk(file) if str(path).endswith(".part") else file

    return opener


def test_disk_full_mid_file_keeps_the_part_and_never_extracts(server, tmp_path, monkeypatch):
    params = sample_params(server, DUMMY, sha256=hashlib.sha256(DUMMY).hexdigest())
    downloads = tmp_path / "downloads"
    monkeypatch.setattr(dl, "open", _disk_fills_after(4000), raising=False)
    with pytest.raises(
        DataError,
        match=r"interrupted after 4000 bytes \(\[Errno 28\] No space left on device.*\); "
        r"free some space on that disk, then run the download stage again",
    ):
        download(params, tmp_path / "raw", downloads)
    assert sorted(p.name for p in downloads.iterdir()) == ["MUSDB18-7-STEMS.zip.part"]
    assert list((tmp_path / "raw").iterdir()) == []  # nothing extracted, no dataset.json

    monkeypatch.delattr(dl, "open")  # space freed: the rerun resumes and verifies the whole file
    download(params, tmp_path / "raw", downloads)
    assert server.requests[-1][1] == "bytes=4000-"
    assert (downloads / "MUSDB18-7-STEMS.zip").read_bytes() == DUMMY
    assert (tmp_path / "raw" / "dataset.json").is_file()


def test_not_enough_disk_for_the_download_is_refused_before_writing(server, tmp_path, monkeypatch):
    params = sample_params(server, DUMMY)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(dl.shutil, "disk_usage", lambda path: usage(10**9, 10**9, 1000))
    with pytest.raises(DataError, match=r"downloads: 0.0 MB still to download but 0.0 MB free; free some space"):
        download(params, tmp_path / "raw", tmp_path / "downloads")
    assert list((tmp_path / "downloads").iterdir()) == []


def test_kept_archive_is_verified_again_before_each_use(server, tmp_path):
    params = sample_params(server, DUMMY, sha256=hashlib.sha256(DUMMY).hexdigest())
    archive = tmp_path / "downloads" / "MUSDB18-7-STEMS.zip"
    download(params, tmp_path / "raw", archive.parent)
    archive.write_bytes(DUMMY.replace(b"a" * 100, b"A" * 100, 1))  # changed on disk since
    with pytest.raises(DataError, match="sha256 .* does not match data.sha256 .*the download was deleted"):
        download(params, tmp_path / "raw", archive.parent)
    assert not archive.exists()
    download(params, tmp_path / "raw", archive.parent)  # fetched again, verified, extracted
    assert archive.read_bytes() == DUMMY and len(server.requests) == 2


class _Redirect(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(302)
        self.send_header("Location", self.server.location)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("location", ["file:///etc/passwd", "ftp://127.0.0.1/musdb18.zip"])
def test_redirects_leave_only_to_http_or_https(tmp_path, location):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Redirect)
    httpd.location = location
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        with pytest.raises(DataError, match=f"{location}: unsupported URL scheme|url '{location}' is not allowed"):
            dl.fetch(
                f"http://127.0.0.1:{httpd.server_address[1]}/musdb18.zip",
                tmp_path / "musdb18.zip",
                allow_insecure_http=True,
            )
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert list(tmp_path.iterdir()) == []


def test_https_is_never_redirected_to_plain_http():
    handler = dl._NoDowngrade(allow_http=False)
    request = urllib.request.Request("https://zenodo.org/records/1117372/files/musdb18.zip")
    with pytest.raises(DataError, match="plain http is refused"):
        handler.redirect_request(request, None, 302, "Found", {}, "http://mirror.example.org/musdb18.zip")


def test_secrets_in_the_url_stay_out_of_messages(server, tmp_path):
    """A granted archive's URL may carry an access token; errors and logs must not repeat it."""
    params = sample_params(server, DUMMY)
    server.files["/musdb18.zip?download=1&access_token=S3CRET"] = DUMMY  # the test server matches the query too
    for path in ("/missing.zip?token=S3CRET", "/musdb18.zip?download=1&access_token=S3CRET"):
        server.drop_after = 100
        with pytest.raises(DataError) as error:
            download({**params, "sample_url": server.url + path}, tmp_path / "raw", tmp_path / "downloads")
        message = str(error.value)
        assert "S3CRET" not in message and "token=***" in message, message
        assert ("HTTP 404" if "missing" in path else "interrupted after 100 bytes") in message
