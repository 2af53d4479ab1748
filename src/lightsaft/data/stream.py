"""Audio in blocks, so that memory does not grow with a file's length.

A *source* is read by sample range (``read(start, stop)``, float32 ``[stop - start, channels]``,
silence outside the file) and knows its ``rate``, ``channels`` and ``frames``: a file read in place
(soundfile), a compressed file decoded by ffmpeg into a temporary raw file, an array, or one of
those seen in stereo or at another rate. Resampling a range, or a stream of blocks
(:class:`BlockResampler`), gives what :func:`lightsaft.data.audio.resample` gives for the whole
signal: the polyphase filter reaches a few dozen samples, so each output range is computed from
its input range plus that margin, aligned to the filter's phase.
"""

from __future__ import annotations

import contextlib
import math
import subprocess
import tempfile
from collections.abc import Iterator
from math import gcd
from pathlib import Path
from typing import Protocol

import numpy as np

from .audio import FFMPEG_SUFFIXES, SOUNDFILE_SUFFIXES, SUPPORTED_SUFFIXES, AudioError, ffmpeg_decoder

DECODE_BLOCK = 1 << 20  # bytes read from ffmpeg at a time


class Source(Protocol):
    rate: int
    channels: int
    frames: int

    def read(self, start: int, stop: int) -> np.ndarray: ...


def _padded(source: Source, start: int, stop: int, inside) -> np.ndarray:
    """``[stop - start, channels]``: ``inside(lo, hi)`` for the part within the file, zeros elsewhere."""
    out = np.zeros((max(0, stop - start), source.channels), dtype=np.float32)
    lo, hi = max(start, 0), min(stop, source.frames)
    if hi > lo:
        out[lo - start : hi - start] = inside(lo, hi)
    return out


class ArraySource:
    """An in-memory ``[samples, channels]`` array."""

    def __init__(self, audio: np.ndarray, rate: int):
        self.audio, self.rate = audio, rate
        self.frames, self.channels = audio.shape

    def read(self, start: int, stop: int) -> np.ndarray:
        return _padded(self, start, stop, lambda lo, hi: self.audio[lo:hi])


class SoundFileSource:
    """A wav/flac/ogg/aiff file, read in place."""

    def __init__(self, path: Path):
        import soundfile as sf

        try:
            self.file = sf.SoundFile(path)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise AudioError(f"{path}: cannot read audio: {e}") from None
        self.path, self.rate, self.channels, self.frames = (
            path,
            self.file.samplerate,
            self.file.channels,
            self.file.frames,
        )

    def _inside(self, lo: int, hi: int) -> np.ndarray:
        self.file.seek(lo)
        block = self.file.read(hi - lo, dtype="float32", always_2d=True)
        if len(block) != hi - lo:
            raise AudioError(f"{self.path}: ends after {lo + len(block)} of its {self.frames} samples (truncated?)")
        return block

    def read(self, start: int, stop: int) -> np.ndarray:
        return _padded(self, start, stop, self._inside)

    def close(self) -> None:
        self.file.close()


class RawSource:
    """Interleaved float32 samples in a file (what :func:`decode_to_file` writes), read by range
    with plain reads: no memory map, whose touched pages would count towards the process."""

    def __init__(self, path: Path, rate: int, channels: int):
        self.file = open(path, "rb")  # noqa: SIM115  (closed by close())
        self.rate, self.channels = rate, channels
        self.frames = path.stat().st_size // (4 * channels)

    def _inside(self, lo: int, hi: int) -> np.ndarray:
        self.file.seek(lo * 4 * self.channels)
        return np.fromfile(self.file, dtype="<f4", count=(hi - lo) * self.channels).reshape(-1, self.channels)

    def read(self, start: int, stop: int) -> np.ndarray:
        return _padded(self, start, stop, self._inside)

    def close(self) -> None:
        self.file.close()


def decode_to_file(path: Path, stream: int, out: Path) -> tuple[int, int]:
    """ffmpeg decodes audio stream ``stream`` of ``path`` into ``out`` (raw float32), a block at a
    time; returns (rate, channels). A ``.stem.mp4`` decodes to 16-bit values, as
    :func:`lightsaft.data.audio.read_audio` decodes it."""
    pcm16 = path.name.lower().endswith(".stem.mp4")
    cmd, rate, channels = ffmpeg_decoder(path, stream, None, pcm16)
    ffmpeg = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        with open(out, "wb") as f:
            carry, width = b"", 2 if pcm16 else 4  # carry: a sample split between two reads
            while data := ffmpeg.stdout.read(DECODE_BLOCK):
                data = carry + data
                whole = len(data) - len(data) % width
                samples = np.frombuffer(data[:whole], dtype="<i2" if pcm16 else "<f4")
                (samples / np.float32(32768) if pcm16 else samples).astype("<f4").tofile(f)
                carry = data[whole:]
        error = ffmpeg.stderr.read().decode(errors="replace").strip()
        ffmpeg.wait()
    except BaseException:
        ffmpeg.kill()
        ffmpeg.wait()
        raise
    finally:
        ffmpeg.stdout.close()
        ffmpeg.stderr.close()
    if ffmpeg.returncode != 0 or out.stat().st_size == 0:
        raise AudioError(f"{path}: ffmpeg could not decode audio stream {stream}: {error[-500:] or 'no audio data'}")
    return rate, channels


@contextlib.contextmanager
def open_audio(path: str | Path, stream: int = 0) -> Iterator[Source]:
    """A file as a source: read in place when soundfile reads it, else decoded by ffmpeg into a
    temporary file (removed on exit); ``stream`` picks a stream of a multi-stream file (``.stem.mp4``)."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise AudioError(
            f"{path}: unsupported format {suffix or '(no suffix)'}; use one of {', '.join(sorted(SUPPORTED_SUFFIXES))}"
        )
    if suffix in SOUNDFILE_SUFFIXES and stream == 0:
        source = SoundFileSource(path)
        try:
            yield source
        finally:
            source.close()
        return
    assert suffix in FFMPEG_SUFFIXES or suffix in SOUNDFILE_SUFFIXES
    with tempfile.TemporaryDirectory(prefix="lightsaft-decode-") as tmp:
        raw = Path(tmp) / "audio.f32"
        rate, channels = decode_to_file(path, stream, raw)
        source = RawSource(raw, rate, channels)
        try:
            yield source
        finally:
            source.close()


class StereoSource:
    """Mono duplicated to both channels; stereo as it is; more channels refused."""

    def __init__(self, source: Source, name: str | Path = "audio"):
        if source.channels not in (1, 2):
            raise AudioError(f"{name}: {source.channels} channels; only mono and stereo are supported")
        self.source, self.rate, self.frames, self.channels = source, source.rate, source.frames, 2

    def read(self, start: int, stop: int) -> np.ndarray:
        block = self.source.read(start, stop)
        return np.repeat(block, 2, axis=1) if block.shape[1] == 1 else block


# ---------------------------------------------------------------------------------------
# Resampling in blocks
def _ratio(rate_from: int, rate_to: int) -> tuple[int, int, int]:
    """(up, down, margin): the reduced ratio, and how many input samples beyond an output range's
    own the filter reaches (scipy's ``resample_poly`` filter has 10 * max(up, down) taps per side
    at the upsampled rate)."""
    g = gcd(rate_from, rate_to)
    up, down = rate_to // g, rate_from // g
    return up, down, 10 * max(up, down) // up + 4


def resampled_length(frames: int, rate_from: int, rate_to: int) -> int:
    """Samples of :func:`lightsaft.data.audio.resample`'s output for ``frames`` input samples."""
    up, down, _ = _ratio(rate_from, rate_to)
    return math.ceil(frames * up / down)


def _resample_range(read, frames: int, up: int, down: int, margin: int, start: int, stop: int) -> np.ndarray:
    """Output samples ``[start, stop)`` of the whole signal's resampling (``read(lo, hi)`` gives
    input samples, ``frames`` of them in all). The input range starts at a multiple of ``down``,
    so the filter's phases line up with the whole signal's: the same sums, term by term."""
    from scipy.signal import resample_poly

    first = max(0, (start * down // up - margin) // down * down)
    last = min(frames, -(-stop * down // up) + margin)
    y = resample_poly(read(first, last), up, down, axis=0)
    offset = first * up // down
    return y[start - offset : stop - offset].astype(np.float32)


class ResampledSource:
    """A source at another rate, read by range (equal to resampling the whole of it)."""

    def __init__(self, source: Source, rate: int):
        self.source, self.rate, self.channels = source, rate, source.channels
        self.up, self.down, self.margin = _ratio(source.rate, rate)
        self.frames = resampled_length(source.frames, source.rate, rate)

    def read(self, start: int, stop: int) -> np.ndarray:
        if self.up == self.down:
            return self.source.read(start, stop)
        return _padded(
            self,
            start,
            stop,
            lambda lo, hi: _resample_range(
                self.source.read, self.source.frames, self.up, self.down, self.margin, lo, hi
            ),
        )


class BlockResampler:
    """Resamples consecutive blocks of a signal of ``frames`` samples as they come: each
    :meth:`push` returns the output samples that no later input can change (after the last
    block, all of them). Together they equal the whole signal's resampling."""

    def __init__(self, rate_from: int, rate_to: int, frames: int):
        self.up, self.down, self.margin = _ratio(rate_from, rate_to)
        self.frames, self.total = frames, resampled_length(frames, rate_from, rate_to)
        self.buffer: np.ndarray | None = None
        self.first = 0  # input sample at buffer[0]
        self.pushed = 0  # input samples received
        self.done = 0  # output samples returned

    def push(self, block: np.ndarray) -> np.ndarray:
        self.pushed += len(block)
        if self.up == self.down:
            return block
        self.buffer = block if self.buffer is None else np.concatenate([self.buffer, block])
        if self.pushed >= self.frames:
            stop = self.total
        else:  # outputs whose input reach (plus the margin) has arrived
            stop = max(self.done, (self.pushed - self.margin) * self.up // self.down - 1)
        if stop <= self.done:
            return block[:0]
        out = _resample_range(self._read, self.frames, self.up, self.down, self.margin, self.done, stop)
        self.done = stop
        keep = max(0, (self.done * self.down // self.up - self.margin) // self.down * self.down)
        self.buffer, self.first = self.buffer[keep - self.first :], keep
        return out

    def _read(self, lo: int, hi: int) -> np.ndarray:
        assert self.first <= lo and hi <= self.pushed, (self.first, lo, hi, self.pushed)
        return self.buffer[lo - self.first : hi - self.first]
