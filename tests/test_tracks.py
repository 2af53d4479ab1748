"""Track lists and audio checks: musdb's validation list, tree scanning, refusing bad audio."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
import soundfile as sf
from helpers import require_ffmpeg, shared_path

from lightsaft.data.audio import AudioError
from lightsaft.data.synthetic import generate
from lightsaft.data.tracks import load_track, musdb_validation_tracks, read_dataset, scan_tree
from lightsaft.errors import DataError


def test_musdb_validation_list_is_read_without_importing_musdb(monkeypatch):
    monkeypatch.delitem(sys.modules, "musdb", raising=False)  # as if never imported (put back afterwards)
    names = musdb_validation_tracks()
    assert (len(names), names[0]) == (14, "Actions - One Minute Smile") and "musdb" not in sys.modules


@pytest.fixture
def tree(tmp_path):
    return generate(tmp_path / "tree", 1, 1, 1, seconds=0.5, seed=0)


def _track(tree) -> dict:
    return next(t for t in scan_tree(tree, "musdb18hq") if t["name"] == "synthetic train 000")


def test_scan_and_load_a_wav_tree(tree):
    tracks = scan_tree(tree, "musdb18hq")
    assert [(t["name"], t["split"]) for t in tracks] == [
        ("synthetic train 000", "train"),
        ("synthetic valid 000", "train"),
        ("synthetic test 000", "test"),
    ]
    audio = load_track(tracks[0])
    assert sorted(audio) == sorted(["mixture", "vocals", "drums", "bass", "other"])
    assert all(a.shape == (22050, 2) and a.dtype == np.float32 for a in audio.values())


def test_scan_names_what_is_missing_or_mismatched(tree):
    (tree / "train" / "synthetic train 000" / "bass.wav").unlink()
    with pytest.raises(DataError, match=r"synthetic train 000/bass.wav: missing"):
        scan_tree(tree, "musdb18hq")
    with pytest.raises(DataError, match=r"no .stem.mp4 files found .*data.source=musdb18hq"):
        scan_tree(tree, "musdb18")


def _rewrite(path, audio, rate):
    sf.write(path, audio, rate, subtype="PCM_16")


BAD_FILES = {
    "sample rate": (lambda p, a: _rewrite(p, a, 22050), r"vocals.wav: sample rate 22050 Hz"),
    "mono": (lambda p, a: _rewrite(p, a[:, :1], 44100), r"vocals.wav: 1 channel\(s\)"),
    "short": (lambda p, a: _rewrite(p, a[:-100], 44100), r"vocals.wav: 21950 samples but the mixture has 22050"),
    "missing": (lambda p, a: p.unlink(), r"vocals.wav: file not found"),
    "corrupt": (lambda p, a: p.write_bytes(b"\x00" * 3000), r"vocals.wav: cannot read audio"),
    "truncated": (lambda p, a: p.write_bytes(p.read_bytes()[:40000]), r"vocals.wav: truncated"),
    "not finite": (
        lambda p, a: sf.write(p, np.full_like(a, np.nan), 44100, subtype="FLOAT"),
        r"vocals.wav: contains NaN",
    ),
}


@pytest.mark.parametrize("problem", BAD_FILES)
def test_bad_wav_stems_are_refused_by_name(tree, problem):
    track = _track(tree)
    path = tree / "train" / "synthetic train 000" / "vocals.wav"
    audio, _ = sf.read(path, dtype="float32")
    damage, message = BAD_FILES[problem]
    damage(path, audio)
    with pytest.raises(AudioError, match=message):
        load_track(track)


def test_truncated_stem_mp4_is_refused(tmp_path):
    require_ffmpeg()
    source = shared_path("musdb", "musdb18-7", "train", "Music Delta - 80s Rock.stem.mp4")
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    shutil.copy(source, tmp_path / "test" / "ok.stem.mp4")
    (tmp_path / "train" / "cut.stem.mp4").write_bytes(source.read_bytes()[:600_000])
    tracks = scan_tree(tmp_path, "musdb18")
    assert {t["name"]: t["split"] for t in tracks} == {"cut": "train", "ok": "test"}
    with pytest.raises(AudioError, match=r"cut.stem.mp4 \(\w+ stream\): \d+ samples but the mixture has \d+"):
        load_track(tracks[0])
    audio = load_track(tracks[1])  # 6.8 s; the exact count depends on the ffmpeg version
    assert len({a.shape for a in audio.values()}) == 1 and abs(len(audio["mixture"]) - 6.8 * 44100) < 4410


@pytest.mark.parametrize(
    "content,error",
    [
        (None, "not found; run the download stage first"),
        ("{not json", "not valid JSON"),
        ('{"format": 0, "tracks": []}', "format 0, expected 1"),
        ('{"format": 1, "tracks": [{"name": "a", "split": "dev", "files": {}}]}', "malformed track entry"),
    ],
)
def test_bad_dataset_json_is_refused(tmp_path, content, error):
    path = tmp_path / "dataset.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=error):
        read_dataset(path)
