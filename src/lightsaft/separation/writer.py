"""Separated audio to files, a block at a time: the one writer of the separate stage and of
``lightsaft separate``.

Formats (``--format``, :data:`lightsaft.separation.params.FORMATS`): ``wav16``, ``wav24``,
``float`` (32-bit float wav), ``flac`` (16-bit PCM) and ``mp3`` (ffmpeg's LAME, constant bitrate).
Every format but ``float`` stores values in [-1, 1] (mp3 decoders give 16-bit PCM): samples
beyond are clipped, as a 16-bit file clips them, and counted (each channel's sample counts), so
that a caller can say how many. A file appears under its name only when complete (temporary
name, then rename).
"""

from __future__ import annotations

import subprocess
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.audio import AudioError, ffmpeg_binary
from ..paths import atomic_path
from ..schema import registry
from . import params

MP3_MAX_RATE = 48000  # MPEG-1 layer III; higher rates are encoded at this one


@dataclass(frozen=True)
class Format:
    suffix: str
    subtype: str | None  # soundfile's; None: encoded by ffmpeg
    clips: bool  # stores values in [-1, 1]


FORMATS = registry(
    params.FORMATS,
    wav16=Format(".wav", "PCM_16", True),
    wav24=Format(".wav", "PCM_24", True),
    float=Format(".wav", "FLOAT", False),
    flac=Format(".flac", "PCM_16", True),
    mp3=Format(".mp3", None, True),
)


def output_path(folder: str | Path, name: str, fmt: str) -> Path:
    """Where ``name`` (a target, ``no_vocals``, ...) is written in ``fmt``: ``folder/<name><suffix>``."""
    return Path(folder) / f"{name}{FORMATS[fmt].suffix}"


class AudioWriter:
    """``folder/<name><suffix>`` written block by block; use as a context manager. ``clipped``:
    the samples clipped so far."""

    def __init__(
        self, folder: str | Path, name: str, rate: int, channels: int, fmt: str, mp3_bitrate: int = params.MP3_BITRATE
    ):
        self.path, self.format = output_path(folder, name, fmt), FORMATS[fmt]
        self.rate, self.channels, self.mp3_bitrate = rate, channels, mp3_bitrate
        self.clipped = 0
        self._stack = ExitStack()

    def __enter__(self) -> AudioWriter:
        tmp = self._stack.enter_context(atomic_path(self.path))
        try:
            if self.format.subtype is not None:
                import soundfile as sf

                self._file: Any = self._stack.enter_context(
                    sf.SoundFile(tmp, "w", self.rate, self.channels, self.format.subtype)
                )
            else:
                encoder = _Mp3Encoder(tmp, self.path, self.rate, self.channels, self.mp3_bitrate)
                self._file = self._stack.enter_context(encoder)
        except BaseException:
            self._stack.__exit__(None, None, None)
            raise
        return self

    def write(self, block: np.ndarray) -> None:
        """``[samples, channels]`` float32, clipped for the formats that need it."""
        block = np.asarray(block, dtype=np.float32)
        if self.format.clips:
            over = np.abs(block) > 1
            if over.any():
                self.clipped += int(over.sum())
                block = np.clip(block, -1.0, 1.0)
        self._file.write(block)

    def __exit__(self, *exc) -> bool | None:
        return self._stack.__exit__(*exc)  # closes the file, then renames it (or removes it on an error)


class _Mp3Encoder:
    """ffmpeg reading float32 samples on its standard input, writing an mp3 file."""

    def __init__(self, path: Path, final: Path, rate: int, channels: int, bitrate: int):
        self.final = final
        cmd = [ffmpeg_binary(), "-v", "error", "-nostdin", "-f", "f32le", "-ar", str(rate), "-ac", str(channels)]
        cmd += ["-i", "pipe:0", "-ar", str(min(rate, MP3_MAX_RATE)), "-c:a", "libmp3lame", "-b:a", f"{bitrate}k"]
        cmd += ["-f", "mp3", "-y", str(path)]
        self.process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)

    def __enter__(self) -> _Mp3Encoder:
        return self

    def write(self, block: np.ndarray) -> None:
        try:
            self.process.stdin.write(block.astype("<f4").tobytes())
        except BrokenPipeError:
            self._fail()

    def _fail(self) -> None:
        self.process.kill()
        error = self.process.stderr.read().decode(errors="replace").strip()
        self.process.wait()
        raise AudioError(f"{self.final}: ffmpeg could not encode mp3: {error[-500:] or 'it stopped'}")

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None:
            self.process.kill()
            self.process.wait()
            return
        with suppress(BrokenPipeError):
            self.process.stdin.close()
        if self.process.wait() != 0:
            self._fail()
