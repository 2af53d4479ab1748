"""``lightsaft separate``: any format, rate and channel count in; one folder of stems per song out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import SpecModel, identity, require_ffmpeg, shared_path

import lightsaft.songs
from lightsaft.cli import main
from lightsaft.spectral import TARGETS
from lightsaft.weights.resolve import ResolvedModel


def tone(rate: int, seconds: float, channels: int) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    left, right = 0.3 * np.sin(2 * np.pi * 220 * t), 0.2 * np.sin(2 * np.pi * 330 * t + 1)
    return np.stack([left, right][:channels], axis=1).astype(np.float32)


def test_rates_channels_and_lengths_are_kept(tmp_path, monkeypatch):
    """With an identity model the stems equal the input: resampling there and back, mono in and
    out, and the exact length are all checked, not just the file names."""
    resolved = ResolvedModel(SpecModel(identity), "stand-in", "stand-in", "0" * 64, "a test", Path("unused.pt"))
    monkeypatch.setattr(lightsaft.songs, "resolve_model", lambda reference, base: resolved)
    songs = {"mono22k.wav": (tone(22050, 0.5, 1), 22050), "stereo48k.flac": (tone(48000, 0.3, 2), 48000)}
    for name, (audio, rate) in songs.items():
        sf.write(tmp_path / name, audio, rate)
    out = tmp_path / "out"
    code = main(
        [
            "separate",
            *(str(tmp_path / n) for n in songs),
            "--model",
            "unused.pt",
            "--out",
            str(out),
            "--targets",
            "vocals,bass",
            "--overlap",
            "0.25",
            "--batch-size",
            "3",
        ]
    )
    assert code == 0
    for name, (audio, song_rate) in songs.items():
        folder = out / name.rsplit(".", 1)[0]
        assert sorted(p.name for p in folder.iterdir()) == ["bass.wav", "vocals.wav"]
        for target in ("bass", "vocals"):
            written, rate = sf.read(folder / f"{target}.wav", dtype="float32", always_2d=True)
            assert rate == song_rate and written.shape == audio.shape
            inner = slice(200, -200)  # resampling filters ring at the very ends
            np.testing.assert_allclose(written[inner], audio[inner], atol=2e-3)


def test_stem_mp4_uses_the_mixture_stream(tmp_path, weights, capsys):
    require_ffmpeg()
    song = shared_path("musdb", "musdb18-7", "test", "The Easton Ellises - Falcon 69.stem.mp4")
    code = main(
        [
            "separate",
            str(song),
            "--model",
            str(weights),
            "--out",
            str(tmp_path / "out"),
            "--targets",
            "drums",
            "--overlap",
            "0",
            "--batch-size",
            "64",
            "--device",
            "cpu",
        ]
    )
    assert code == 0, capsys.readouterr().err
    written, rate = sf.read(tmp_path / "out" / "The Easton Ellises - Falcon 69" / "drums.wav")
    mixture, _ = lightsaft.songs.read_audio(song, stream=0)
    assert rate == 44100 and written.shape == mixture.shape and np.isfinite(written).all()


def test_unreadable_song_is_named_and_the_others_still_run(tmp_path, weights, capsys):
    good, bad = tmp_path / "good.wav", tmp_path / "broken.wav"
    sf.write(good, tone(44100, 0.2, 2), 44100)
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    code = main(
        [
            "separate",
            str(bad),
            str(tmp_path / "missing.mp3"),
            str(good),
            "--model",
            str(weights),
            "--out",
            str(tmp_path / "out"),
            "--device",
            "cpu",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "broken.wav" in err and "missing.mp3" in err and "2 of 3 songs failed" in err
    assert sorted(p.name for p in (tmp_path / "out" / "good").iterdir()) == sorted(f"{t}.wav" for t in TARGETS)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["good"]


def test_same_song_name_twice_is_refused(tmp_path, weights, capsys):
    (tmp_path / "a").mkdir()
    for path in (tmp_path / "song.wav", tmp_path / "a" / "song.flac"):
        sf.write(path, tone(44100, 0.1, 2), 44100)
    code = main(
        [
            "separate",
            str(tmp_path / "song.wav"),
            str(tmp_path / "a" / "song.flac"),
            "--model",
            str(weights),
            "--out",
            str(tmp_path / "out"),
            "--targets",
            "bass",
            "--device",
            "cpu",
        ]
    )
    assert code == 1 and "song.flac: writes" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--out", "{tmp}/file.txt/sub"], "cannot write the output folder"),
        (["--targets", "vocals,guitar"], "guitar"),
        (["--overlap", "0.95"], "--overlap = 0.95: must be <= 0.9"),
        (["--protocol", "official", "--overlap", "0.8"], "--overlap = 0.8: the official protocol takes 0 to 0.5"),
        (["--protocol", "official", "--min-trim", "50"], "--min-trim = 50: the official protocol trims whole hops"),
        (["--batch-size", "0"], "--batch-size = 0: expected auto or a number"),
        (["--page", "--audio-format", "flac"], "--audio-format = 'flac': must be one of 'mp3', 'ogg', 'wav'"),
        (["--model", "{tmp}/none.pt"], "none.pt': no such file"),
    ],
)
def test_errors_that_stop_everything(tmp_path, weights, capsys, args, message):
    (tmp_path / "file.txt").write_text("not a folder")
    song = tmp_path / "song.wav"
    sf.write(song, tone(44100, 0.1, 2), 44100)
    base = {"--model": str(weights), "--out": str(tmp_path / "out")}
    extra = [a.replace("{tmp}", str(tmp_path)) for a in args]
    flags = [a for a in extra if a == "--page"]
    extra = [a for a in extra if a != "--page"]
    base.update(dict(zip(extra[::2], extra[1::2])))
    code = main(["separate", str(song), *flags, *[x for kv in base.items() for x in kv]])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.startswith("error: ")
    assert not (tmp_path / "out" / "song").exists()


@pytest.mark.slow  # the console script in a process of its own (an interpreter importing torch)
def test_entry_point_runs(tmp_path, weights):
    """The installed console script, end to end in a fresh process."""
    exe = Path(sys.executable).parent / "lightsaft"
    song = tmp_path / "s.wav"
    sf.write(song, tone(16000, 0.2, 1), 16000)
    result = subprocess.run(
        [str(exe), "separate", str(song), "--model", str(weights), "--out", str(tmp_path / "o"), "--targets", "vocals"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    info = sf.info(tmp_path / "o" / "s" / "vocals.wav")
    assert (info.samplerate, info.channels, info.frames) == (16000, 1, 3200)
