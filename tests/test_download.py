"""The download stage: a local HTTP server with Range support, checksums, resume, safe extraction."""

from __future__ import annotations

import hashlib
import io
import json
import re
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import (
    DUMMY,
    data_params,
    musdb_zip,
    require_ffmpeg,
    run_stage_in_process,
    sample_params,
    shared_path,
    zip_bytes,
)

from lightsaft import download as dl
from lightsaft.data.tracks import read_dataset
from lightsaft.download import download, extract_zip
from lightsaft.errors import DataError

ROCK = ("musdb", "musdb18-7", "train", "Music Delta - 80s Rock.stem.mp4")
FALCON = ("musdb", "musdb18-7", "test", "The Easton Ellises - Falcon 69.stem.mp4")


@pytest.fixture(autouse=True)
def project(tmp_path, monkeypatch):
    """Each test is its own project: downloads go to <tmp_path>/data/downloads."""
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    return tmp_path


def _leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def test_pinned_download_extracts_and_lists_tracks(server, tmp_path):
    params = sample_params(server, DUMMY, sha256=hashlib.sha256(DUMMY).hexdigest())
    dataset_json = download(params, tmp_path / "raw")
    data = read_dataset(dataset_json)  # paths resolved against the file
    assert data["format"] == 1 and data["source"] == "musdb18-sample"
    assert data["sha256"] == params["sha256"]
    assert {t["name"]: t["split"] for t in data["tracks"]} == {"A": "train", "B": "valid", "C": "test"}
    for track in data["tracks"]:
        assert Path(track["stem_file"]).read_bytes() == track["name"].lower().encode() * 5000
        assert Path(track["stem_file"]).is_relative_to(tmp_path / "raw")
    assert (tmp_path / "data" / "downloads" / "MUSDB18-7-STEMS.zip").read_bytes() == DUMMY
    # A rerun uses the verified archive instead of fetching it again.
    download(params, tmp_path / "raw")
    assert len(server.requests) == 1


def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    params = sample_params(server, DUMMY, sha256="0" * 64)
    with pytest.raises(DataError, match="sha256 .* does not match data.sha256"):
        download(params, tmp_path / "raw")
    assert _leftovers(tmp_path / "data" / "downloads") == []
    assert _leftovers(tmp_path / "raw") == []


def test_interrupted_download_resumes(server, tmp_path):
    params = sample_params(server, DUMMY, sha256=hashlib.sha256(DUMMY).hexdigest())
    server.drop_after = len(DUMMY) // 3
    with pytest.raises(DataError, match="interrupted .* run the download stage again"):
        download(params, tmp_path / "raw")
    part = tmp_path / "data" / "downloads" / "MUSDB18-7-STEMS.zip.part"
    assert part.stat().st_size == len(DUMMY) // 3
    assert not (tmp_path / "raw" / "dataset.json").exists()

    download(params, tmp_path / "raw")
    assert server.requests[-1] == ("/MUSDB18-7-STEMS.zip", f"bytes={len(DUMMY) // 3}-")
    assert (tmp_path / "data" / "downloads" / "MUSDB18-7-STEMS.zip").read_bytes() == DUMMY
    assert not part.exists()


def test_server_without_ranges_restarts_from_zero(server, tmp_path):
    server.ranges = False
    params = sample_params(server, DUMMY, sha256=hashlib.sha256(DUMMY).hexdigest())
    (tmp_path / "data" / "downloads").mkdir(parents=True)
    (tmp_path / "data" / "downloads" / "MUSDB18-7-STEMS.zip.part").write_bytes(b"stale bytes of another file")
    download(params, tmp_path / "raw")
    assert (tmp_path / "data" / "downloads" / "MUSDB18-7-STEMS.zip").read_bytes() == DUMMY


def test_complete_part_file_is_accepted(server, tmp_path):
    """A run killed after the last byte but before the rename: the server answers 416."""
    params = sample_params(server, DUMMY, sha256=hashlib.sha256(DUMMY).hexdigest())
    (tmp_path / "data" / "downloads").mkdir(parents=True)
    (tmp_path / "data" / "downloads" / "MUSDB18-7-STEMS.zip.part").write_bytes(DUMMY)
    download(params, tmp_path / "raw")
    assert (tmp_path / "data" / "downloads" / "MUSDB18-7-STEMS.zip").read_bytes() == DUMMY


def test_plain_http_is_refused(server, tmp_path):
    params = sample_params(server, DUMMY, allow_insecure_http=False)
    with pytest.raises(DataError, match="plain http is refused.*allow_insecure_http"):
        download(params, tmp_path / "raw")
    assert server.requests == []


def _symlink(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize(
    "bad",
    [
        zipfile.ZipInfo("../../escaped"),
        zipfile.ZipInfo("train/../../escaped"),
        zipfile.ZipInfo("/tmp/absolute"),
        _symlink("train/link.stem.mp4"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink"],
)
def test_unsafe_archive_entries_are_refused(tmp_path, bad):
    archive = tmp_path / "user" / "musdb18.zip"
    archive.parent.mkdir()
    good = {"train/A.stem.mp4": b"a", "test/C.stem.mp4": b"c"}
    archive.write_bytes(zip_bytes(good, [bad]))
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    params = data_params(source="musdb18", archive=str(archive), sha256=digest)
    with pytest.raises(DataError, match=f"refusing to extract entry {re.escape(repr(bad.filename))}"):
        download(params, tmp_path / "work" / "raw")
    assert _leftovers(tmp_path / "work") == ["raw"]  # the created output folder, empty
    assert not (tmp_path / "escaped").exists() and archive.is_file()  # the user's file is kept


def test_corrupt_archive_leaves_nothing(tmp_path):
    body = bytearray(zip_bytes({"train/A.stem.mp4": b"x" * 1000, "test/C.stem.mp4": b"y" * 1000}))
    body[body.index(b"x" * 1000) + 500] ^= 0xFF  # one flipped bit in the stored data: CRC mismatch
    archive = tmp_path / "bad.zip"
    archive.write_bytes(bytes(body))
    with pytest.raises(DataError, match="corrupt"):
        extract_zip(archive, tmp_path / "out" / "tree")
    assert _leftovers(tmp_path / "out") == []


def test_unpinned_archive_is_checked_and_its_sha256_recorded(server, tmp_path, monkeypatch, capsys):
    require_ffmpeg()
    rock, falcon = shared_path(*ROCK).read_bytes(), shared_path(*FALCON).read_bytes()
    body = musdb_zip({"A": rock, "B": rock}, {"C": falcon})
    params = sample_params(server, body)

    with pytest.raises(DataError, match="2 tracks, a complete MUSDB18 release has 100"):
        download(params, tmp_path / "raw")  # the real counts: 100 train / 50 test
    assert _leftovers(tmp_path / "raw") == []

    monkeypatch.setattr(dl, "EXPECTED_TRACKS", {"train": 2, "test": 1})
    data = json.loads(download(params, tmp_path / "raw").read_text())
    digest = hashlib.sha256(body).hexdigest()
    assert data["sha256"] == digest
    assert f"sha256 {digest} (set data.sha256 to pin it)" in capsys.readouterr().out


def test_unpinned_archive_with_a_non_stem_file_is_refused(server, tmp_path, monkeypatch):
    require_ffmpeg()
    wav = io.BytesIO()
    sf.write(wav, np.zeros((4410, 2), dtype=np.float32), 44100, format="WAV")
    body = musdb_zip(
        {"A": shared_path(*ROCK).read_bytes(), "B": wav.getvalue()}, {"C": shared_path(*FALCON).read_bytes()}
    )
    monkeypatch.setattr(dl, "EXPECTED_TRACKS", {"train": 2, "test": 1})
    with pytest.raises(DataError, match=r"B.stem.mp4: 1 audio streams, expected 5"):
        download(sample_params(server, body), tmp_path / "raw")


@pytest.mark.parametrize(
    "source,url",
    [("musdb18", "https://zenodo.org/records/1117372"), ("musdb18hq", "https://zenodo.org/records/3338373")],
)
def test_missing_dataset_says_how_to_get_it(tmp_path, source, url):
    with pytest.raises(DataError) as error:
        download(data_params(source=source, root=str(tmp_path / "musdb")), tmp_path / "raw")
    message = str(error.value)
    for needle in (url, str(tmp_path / "musdb"), "data.archive", "musdb18-sample", "synthetic"):
        assert needle in message


def test_local_folder_gets_a_pointer_only(tmp_path):
    root = shared_path("musdb", "musdb18-7")
    params = data_params(source="musdb18", root=str(root), valid_tracks=["Music Delta - 80s Rock"])
    data = json.loads(download(params, tmp_path / "raw").read_text())
    assert _leftovers(tmp_path / "raw") == ["dataset.json"]
    assert data["root"] == str(root) and data["sha256"] is None  # absolute, a symbolic link kept as given
    assert [(t["name"], t["split"], t["stem_file"]) for t in data["tracks"]] == [
        ("Music Delta - 80s Rock", "valid", str(shared_path(*ROCK))),
        ("The Easton Ellises - Falcon 69", "test", str(shared_path(*FALCON))),
    ]


@pytest.mark.parametrize(
    "valid,error",
    [
        (None, r"musdb's official validation tracks .*'Actions - One Minute Smile' is not a train track"),
        ([], "the validation split is empty"),
        (["The Easton Ellises - Falcon 69"], "data.valid_tracks: 'The Easton Ellises - Falcon 69' is not a"),
    ],
)
def test_bad_validation_split_is_an_error(tmp_path, valid, error):
    params = data_params(source="musdb18", root=str(shared_path("musdb", "musdb18-7")), valid_tracks=valid)
    with pytest.raises(DataError, match=error):
        download(params, tmp_path / "raw")


def test_synthetic_source(tmp_path):
    synthetic = {"train_tracks": 2, "valid_tracks": 1, "test_tracks": 1, "seconds": 0.5, "seed": 1}
    dataset_json = download(data_params(source="synthetic", synthetic=synthetic), tmp_path / "raw")
    data = read_dataset(dataset_json)  # paths resolved against the file
    assert [(t["name"], t["split"]) for t in data["tracks"]] == [
        ("synthetic train 000", "train"),
        ("synthetic train 001", "train"),
        ("synthetic valid 000", "valid"),
        ("synthetic test 000", "test"),
    ]
    assert all(Path(path).is_file() for t in data["tracks"] for path in t["files"].values())


def test_stage_script_reports_one_line_error(tmp_path, capsys):
    (tmp_path / "params.yaml").write_text(f"data:\n  source: musdb18hq\n  root: {tmp_path / 'nowhere'}\n")
    run_stage_in_process(tmp_path, "download", code=2)
    stderr = capsys.readouterr().err
    assert stderr.startswith("error: download: musdb18hq not found")
    assert "Traceback" not in stderr
    assert not (tmp_path / "data" / "raw" / "dataset.json").exists()
