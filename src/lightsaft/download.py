"""The ``download`` stage: find, fetch or generate the data set and list its tracks.

Sources (``data.source``): a local MUSDB18 / MUSDB18-HQ folder (only a pointer is written), a
zip (``data.root`` or ``data.archive``, a path or an https URL), the public 7-second previews
(``musdb18-sample``), or the synthetic demo set. Downloads resume (HTTP Range) from a ``.part``
file kept in ``downloads_dir``; archives are checked (sha256 when pinned, otherwise their content)
and extracted without letting any entry escape the target folder.
"""

from __future__ import annotations

import re
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

from .data.audio import AudioError, probe
from .data.extra import scan_extra_roots
from .data.sources import SOURCES
from .data.synthetic import generate, track_names
from .data.tracks import (
    STEMS,
    assign_splits,
    find_tree,
    musdb_validation_tracks,
    scan_tree,
    write_dataset,
)
from .errors import DataError
from .fetch import CHUNK, fetch
from .paths import atomic_dir, file_lock, file_sha256, in_project

EXPECTED_TRACKS = {"train": 100, "test": 50}  # every MUSDB18 release, previews included


def download(data_params: dict[str, Any], out_dir: str | Path, downloads_dir: str | Path | None = None) -> Path:
    """Prepare ``out_dir`` for the ``prepare`` stage; returns ``out_dir/dataset.json``.

    ``downloads_dir`` (default: ``data/downloads`` of the main repository) keeps fetched archives
    and their ``.part`` files outside the stage output (and outside DVC experiment copies), so a
    rerun resumes or reuses them instead of starting over.
    """
    p, out_dir, source = data_params, Path(out_dir), SOURCES[data_params["source"]]
    # data.extra_train first: a folder that cannot be trained on stops download before anything is written
    extra_tracks, extra_roots = scan_extra_roots(p["extra_train"])
    out_dir.mkdir(parents=True, exist_ok=True)
    if source.generated:
        s = p["synthetic"]
        tree, sha256 = (
            generate(
                out_dir / "synthetic", s["train_tracks"], s["valid_tracks"], s["test_tracks"], s["seconds"], s["seed"]
            ),
            None,
        )
    else:
        tree, sha256 = _locate(p, out_dir, Path(downloads_dir or in_project("data/downloads")))
    tracks = assign_splits(scan_tree(tree, source.name), *_valid_names(p)) + extra_tracks  # training split only
    return write_dataset(out_dir / "dataset.json", source.name, tree, sha256, tracks, extra_roots)


def _valid_names(p: dict[str, Any]) -> tuple[list[str], str]:
    if p["valid_tracks"] is not None:
        return p["valid_tracks"], "data.valid_tracks"
    if SOURCES[p["source"]].generated:
        return track_names("valid", p["synthetic"]["valid_tracks"]), "synthetic validation tracks"
    return musdb_validation_tracks(), "musdb's official validation tracks (data.valid_tracks: null)"


def _locate(p: dict[str, Any], out_dir: Path, downloads_dir: Path) -> tuple[Path, str | None]:
    """The tree of a MUSDB18 release and the sha256 of its archive (None for a plain folder)."""
    source = SOURCES[p["source"]]
    location = p[source.fetch] if source.fetch else p["archive"]
    if location is None and p["root"].lower().endswith(".zip"):
        location = p["root"]
    if location is None:
        tree = find_tree(in_project(p["root"]))
        if tree is None:
            raise DataError(source.missing_message(p["root"]))
        return tree, None
    if urlparse(location).scheme in ("http", "https"):
        archive = downloads_dir / _url_filename(location)
        with file_lock(in_project(".lightsaft/locks") / f"download-{archive.name}.lock"):  # shared by queued runs
            fetch(location, archive, p["allow_insecure_http"])
    elif in_project(location).is_file():
        archive = in_project(location)
    else:
        raise DataError(f"{location}: archive not found" if source.fetch else source.missing_message(location))
    sha256 = verify_sha256(archive, p["sha256"], delete=archive.parent == downloads_dir)
    dest = extract_zip(archive, out_dir / source.name)
    try:
        tree = find_tree(dest)
        if tree is None:
            raise DataError(f"{archive}: holds no train/ and test/ folders; is it a {source.name} archive?")
        if p["sha256"] is None:
            check_content(tree, source.layout)
            print(f"{archive.name}: content checked; sha256 {sha256} (set data.sha256 to pin it)")
    except DataError:
        shutil.rmtree(dest)  # not what was asked for: leave nothing that looks usable
        raise
    return tree, sha256


def _url_filename(url: str) -> str:
    name = unquote(PurePosixPath(urlparse(url).path).name)
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "download.zip"


# ---------------------------------------------------------------------------------------
# Checking and extracting
def verify_sha256(path: Path, expected: str | None, delete: bool) -> str:
    """The file's sha256; a mismatch with ``expected`` raises (and deletes a downloaded file)."""
    actual = file_sha256(path)
    if expected is not None and actual != expected:
        if delete:
            path.unlink()
        raise DataError(
            f"{path}: sha256 {actual} does not match data.sha256 = {expected}"
            f"{' (the download was deleted)' if delete else ''}; check the URL/file and the "
            f"checksum you were given"
        )
    return actual


def _unsafe(info: zipfile.ZipInfo) -> str | None:
    """Why an archive entry must not be extracted, or None."""
    name, kind = info.filename, stat.S_IFMT(info.external_attr >> 16)  # 0: no Unix file type
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if "\\" in name or ".." in PurePosixPath(name).parts:
        return "path leaves the target folder"
    if kind == stat.S_IFLNK:
        return "symbolic link"
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        return "special file"
    return None


def extract_zip(archive: str | Path, dest: str | Path) -> Path:
    """Extract a zip into ``dest`` (replaced atomically); refuses unsafe or corrupt archives whole."""
    archive, dest = Path(archive), Path(dest)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{archive}: not a readable zip ({e}); download it again") from None
    with zf:
        members = zf.infolist()
        for info in members:
            if (why := _unsafe(info)) is not None:
                raise DataError(f"{archive}: refusing to extract entry {info.filename!r} ({why})")
        dest.parent.mkdir(parents=True, exist_ok=True)
        needed, free = sum(i.file_size for i in members), shutil.disk_usage(dest.parent).free
        if needed > free:
            raise DataError(
                f"{archive}: needs {needed / 1e9:.1f} GB to extract, {free / 1e9:.1f} GB free under {dest.parent}"
            )
        try:
            with atomic_dir(dest) as tmp:
                root = tmp.resolve()
                for info in members:
                    target = (tmp / info.filename).resolve()
                    if not target.is_relative_to(root):
                        raise DataError(
                            f"{archive}: refusing to extract entry {info.filename!r} (path leaves the target folder)"
                        )
                    if info.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(target, "wb") as dst:  # reading checks the CRC
                        shutil.copyfileobj(src, dst, CHUNK)
        except zipfile.BadZipFile as e:
            raise DataError(f"{archive}: corrupt ({e}); download it again") from None
    return dest


def check_content(tree: Path, layout: str) -> None:
    """An unpinned archive must look like MUSDB18: 100 train / 50 test tracks, five streams each
    (``layout`` of :class:`~lightsaft.data.sources.Source`)."""
    for split, expected in EXPECTED_TRACKS.items():
        if layout == "stems":
            found = sorted((tree / split).glob("*.stem.mp4"))
        else:
            folder = tree / split
            found = sorted(d for d in folder.iterdir() if d.is_dir()) if folder.is_dir() else []
        if len(found) != expected:
            raise DataError(
                f"{tree / split}: {len(found)} tracks, a complete MUSDB18 release has "
                f"{expected}; the archive is incomplete or not MUSDB18"
            )
        for track in found:
            if layout == "stems":
                try:
                    streams = len(probe(track)["audio"])
                except AudioError as e:
                    raise DataError(str(e)) from None
            else:
                streams = sum((track / f"{stem}.wav").is_file() for stem in STEMS)
            if streams != len(STEMS):
                raise DataError(
                    f"{track}: {streams} audio streams, expected {len(STEMS)} (mixture, drums, bass, other, vocals)"
                )
