"""``lightsaft separate``: any format, rate and channel count in; one folder of stems per song out."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import SpecModel, identity, noise, require_ffmpeg, shared_path

import lightsaft.songs
from lightsaft.cli import main
from lightsaft.data.audio import read_audio, resample
from lightsaft.data.stream import ArraySource, BlockResampler, ResampledSource, open_audio
from lightsaft.separation.track import separate_track
from lightsaft.spectral import SAMPLE_RATE, TARGETS
from lightsaft.weights.ours import load_weights
from lightsaft.weights.resolve import ResolvedModel


def tone(rate: int, seconds: float, channels: int) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    left, right = 0.3 * np.sin(2 * np.pi * 220 * t), 0.2 * np.sin(2 * np.pi * 330 * t + 1)
    return np.stack([left, right][:channels], axis=1).astype(np.float32)


def stand_in(monkeypatch, fn) -> None:
    """``--model`` resolves to a stand-in whose output is ``fn(spec, condition)``."""
    resolved = ResolvedModel(SpecModel(fn), "stand-in", "stand-in", "0" * 64, "a test", Path("unused.pt"))
    monkeypatch.setattr(lightsaft.songs, "resolve_model", lambda reference, base: resolved)


def test_rates_channels_and_lengths_are_kept(tmp_path, monkeypatch):
    """With an identity model the stems equal the input: resampling there and back, mono in and
    out, and the exact length are all checked, not just the file names."""
    stand_in(monkeypatch, identity)
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


def test_two_stems_runs_one_target_and_writes_the_rest_as_the_song_minus_it(tmp_path, monkeypatch):
    """``--two-stems vocals``: vocals and no_vocals (song minus vocals, at the song's own rate and
    channels), and only the vocals condition ever reaches the model."""
    conditions = []

    def quarter(spec, condition):
        conditions.extend(condition.tolist())
        return spec * 0.25

    stand_in(monkeypatch, quarter)
    songs = {"stereo48k.wav": (tone(48000, 0.4, 2), 48000), "mono22k.flac": (tone(22050, 0.3, 1), 22050)}
    for name, (audio, rate) in songs.items():
        sf.write(tmp_path / name, audio, rate, subtype="FLOAT" if name.endswith(".wav") else "PCM_24")
        songs[name] = sf.read(tmp_path / name, dtype="float32", always_2d=True)  # as stored
    out = tmp_path / "out"
    args = ["--model", "m.pt", "--out", str(out), "--two-stems", "vocals", "--format", "float"]
    assert main(["separate", *(str(tmp_path / n) for n in songs), *args]) == 0
    assert conditions and set(conditions) == {TARGETS.index("vocals")}
    for name, (audio, rate) in songs.items():
        folder = out / name.split(".")[0]
        assert sorted(p.name for p in folder.iterdir()) == ["no_vocals.wav", "vocals.wav"]
        vocals, vocals_rate = sf.read(folder / "vocals.wav", dtype="float32", always_2d=True)
        rest, rest_rate = sf.read(folder / "no_vocals.wav", dtype="float32", always_2d=True)
        assert vocals_rate == rest_rate == rate and vocals.shape == rest.shape == audio.shape
        np.testing.assert_allclose(vocals + rest, audio, atol=1e-6)  # the song, exactly
        inner = slice(200, -200)  # resampling filters ring at the very ends
        np.testing.assert_allclose(rest[inner], 0.75 * audio[inner], atol=2e-3)


def loud_square(seconds: float) -> np.ndarray:
    """Stereo, +-0.5 with bursts of +-1.5 (past full scale): no sample near +-1."""
    n = int(SAMPLE_RATE * seconds)
    wave = 0.5 * np.sign(np.sin(2 * np.pi * 100 * np.arange(n) / SAMPLE_RATE) + 1e-9)
    wave[(np.arange(n) // 2000) % 4 == 1] *= 3
    return np.stack([wave, -wave], axis=1).astype(np.float32)


@pytest.mark.parametrize(
    "fmt,suffix,subtype,step",
    [("wav16", ".wav", "PCM_16", 1.5 / 32768), ("wav24", ".wav", "PCM_24", 2**-23), ("float", ".wav", "FLOAT", 0),
     ("flac", ".flac", "PCM_16", 1.5 / 32768), ("mp3", ".mp3", None, None)],
)  # fmt: skip
def test_formats_clip_and_report_what_they_clipped(tmp_path, monkeypatch, capsys, fmt, suffix, subtype, step):
    stand_in(monkeypatch, identity)
    song = tmp_path / "loud.wav"
    audio = loud_square(0.5)
    sf.write(song, audio, SAMPLE_RATE, subtype="FLOAT")
    args = ["--model", "m.pt", "--out", str(tmp_path / "out"), "--targets", "drums", "--format", fmt]
    assert main(["separate", str(song), *args, "--mp3-bitrate", "128"]) == 0
    path = tmp_path / "out" / "loud" / f"drums{suffix}"
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    err = capsys.readouterr().err
    over = int(np.sum(np.abs(audio) > 1))
    if fmt == "float":
        written, _ = sf.read(path, dtype="float32")
        assert sf.info(str(path)).subtype == "FLOAT" and "clipped" not in err
        np.testing.assert_allclose(written, audio, atol=1e-4)  # kept beyond full scale
        return
    assert f"warning: {path}: {over} samples clipped to [-1, 1]" in err
    if fmt == "mp3":
        decoded, rate = read_audio(path)
        assert rate == SAMPLE_RATE and abs(len(decoded) - len(audio)) < 2 * 1152 + 529
        assert np.abs(decoded).max() < 1.3  # clipped before encoding (1.5 unclipped; a square wave rings)
        assert abs(path.stat().st_size * 8 / 0.5 / 1000 - 128) < 20  # kbit/s
        return
    written, _ = sf.read(path, dtype="float32")
    assert sf.info(str(path)).subtype == subtype
    np.testing.assert_allclose(written, audio.clip(-1, 1), rtol=0, atol=step + 1e-4)


def test_a_resampled_song_in_blocks_is_the_whole_song_separated(tmp_path, weights):
    """Read, resampled to 44.1 kHz, separated and resampled back a block at a time: the same as
    the whole song at once (resample, separate_track, resample back)."""
    song = tmp_path / "song.wav"
    audio = tone(48000, 1.5, 2) + 0.05 * np.random.default_rng(0).standard_normal((72000, 2)).astype(np.float32)
    sf.write(song, audio, 48000, subtype="FLOAT")
    options = ["--targets", "vocals,bass", "--format", "float", "--batch-size", "8", "--device", "cpu"]
    assert main(["separate", str(song), "--model", str(weights), "--out", str(tmp_path / "out"), *options]) == 0
    whole = separate_track(load_weights(weights), resample(audio, 48000, SAMPLE_RATE), targets=["vocals", "bass"],
                           batch_size=8, device="cpu")  # fmt: skip
    for target, estimate in whole.items():
        written, rate = sf.read(tmp_path / "out" / "song" / f"{target}.wav", dtype="float32")
        assert rate == 48000
        np.testing.assert_allclose(written, resample(estimate, SAMPLE_RATE, 48000)[: len(audio)], rtol=0, atol=1e-6)


@pytest.mark.parametrize("rates", [(48000, 44100), (22050, 44100), (8000, 44100), (96000, 44100), (44100, 48000)])
def test_resampling_in_blocks_is_resampling_the_whole(rates):
    """Ranges read from a resampled source, and irregular blocks pushed through a block resampler,
    give what resample() gives for the whole signal."""
    rate_from, rate_to = rates
    audio = noise(12_345, seed=rate_from)
    whole = resample(audio, rate_from, rate_to)
    source = ResampledSource(ArraySource(audio, rate_from), rate_to)
    assert source.frames == len(whole) and source.rate == rate_to
    ranges = np.concatenate([source.read(i, min(i + 777, source.frames)) for i in range(0, source.frames, 777)])
    np.testing.assert_allclose(ranges, whole, rtol=0, atol=1e-7)
    assert not source.read(-50, 0).any() and not source.read(source.frames, source.frames + 9).any()
    resampler, cuts = BlockResampler(rate_from, rate_to, len(audio)), [0, 1, 500, 501, 4000, 12_000, len(audio)]
    pushed = np.concatenate([resampler.push(audio[a:b]) for a, b in itertools.pairwise(cuts)])
    np.testing.assert_allclose(pushed, whole, rtol=0, atol=1e-7)


def test_compressed_songs_decode_in_blocks_as_a_whole(tmp_path):
    """mp3 through ffmpeg into a temporary file, read by range; a .stem.mp4's mixture as 16-bit values."""
    require_ffmpeg()
    mp3 = tmp_path / "song.mp3"
    sf.write(mp3, tone(44100, 1.0, 2), 44100)
    stem = shared_path("musdb", "musdb18-7", "test", "The Easton Ellises - Falcon 69.stem.mp4")
    for path in (mp3, stem):
        whole, rate = read_audio(path, stream=0)
        with open_audio(path) as source:
            assert (source.rate, source.channels, source.frames) == (rate, 2, len(whole))
            blocks = np.concatenate([source.read(i, i + 30_000) for i in range(-100, source.frames, 30_000)])
            temp = source.file.name
        np.testing.assert_array_equal(blocks[100 : 100 + len(whole)], whole)
        assert not blocks[:100].any() and not blocks[100 + len(whole) :].any()
        assert not Path(temp).exists()  # the decoded copy is gone


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
    mixture, _ = read_audio(song, stream=0)
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
        (["--targets", ","], "--targets ,: choose one or more of vocals, drums, bass, other"),
        (["--device", "tpu9"], "--device = 'tpu9': expected auto, cpu, cuda, cuda:N or mps"),
        (["--overlap", "0.95"], "--overlap = 0.95: must be <= 0.9"),
        (["--protocol", "official", "--overlap", "0.8"], "--overlap = 0.8: the official protocol takes 0 to 0.5"),
        (["--protocol", "official", "--min-trim", "50"], "--min-trim = 50: the official protocol trims whole hops"),
        (["--batch-size", "0"], "--batch-size = 0: expected auto or a number"),
        (["--protocol", "museval"], "--protocol = 'museval': must be one of 'crossfade', 'official'"),
        (["--min-trim", "-1"], "--min-trim = -1: must be >= 0"),
        (["--page", "--audio-format", "flac"], "--audio-format = 'flac': must be one of 'mp3', 'ogg', 'wav'"),
        (["--model", "{tmp}/none.pt"], "none.pt': no such file"),
        (["--format", "ogg"], "--format = 'ogg': must be one of 'wav16', 'wav24', 'float', 'flac', 'mp3'"),
        (["--format", "mp3", "--mp3-bitrate", "300"], "--mp3-bitrate = 300: must be one of 32,"),
        (["--two-stems", "guitar"], "--two-stems guitar: choose one of vocals, drums, bass, other"),
        (["--two-stems", "vocals", "--targets", "bass"], "--two-stems and --targets: give one of them"),
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
