"""Reading and writing audio: soundfile for wav/flac/ogg, ffmpeg for mp3, mp4 and stems.

All arrays are float32 ``[samples, channels]``. Writers go through a temporary file and a
rename, so a killed process never leaves a truncated file that looks complete.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from math import gcd
from pathlib import Path

import numpy as np

from ..errors import LightSAFTError
from ..paths import atomic_path

SOUNDFILE_SUFFIXES = {".wav", ".flac", ".ogg", ".aiff", ".aif"}
FFMPEG_SUFFIXES = {".mp3", ".mp4", ".m4a", ".aac", ".opus", ".webm"}
SUPPORTED_SUFFIXES = SOUNDFILE_SUFFIXES | FFMPEG_SUFFIXES
# MUSDB18 .stem.mp4 stream order (musdb's configs/mus.yaml stem_ids).
STEM_STREAMS = {"mixture": 0, "drums": 1, "bass": 2, "other": 3, "vocals": 4}


class AudioError(LightSAFTError, RuntimeError):
    """An audio file is missing, unreadable or not what the pipeline needs."""


def ffmpeg_binary(name: str = "ffmpeg") -> str:
    path = shutil.which(name)
    if path is None:
        raise AudioError(
            f"{name} not found: install it (Debian/Ubuntu: apt-get install -y ffmpeg; "
            f"macOS: brew install ffmpeg) or run `make setup`"
        )
    return path


def probe(path: str | Path) -> dict:
    """ffprobe's view of a file: its audio streams with sample rate and channel count."""
    path = Path(path)
    cmd = [
        ffmpeg_binary("ffprobe"),
        "-v",
        "error",
        "-show_entries",
        "stream=index,codec_type,sample_rate,channels:format=duration",
        "-of",
        "json",
        str(path),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise AudioError(f"{path}: cannot read audio: {result.stderr.strip() or 'ffprobe failed'}")
    info = json.loads(result.stdout)
    info["audio"] = [s for s in info.get("streams", []) if s.get("codec_type") == "audio"]
    return info


def ffmpeg_decoder(path: Path, stream: int, sample_rate: int | None, pcm16: bool) -> tuple[list[str], int, int]:
    """The ffmpeg command that writes audio stream ``stream`` of ``path`` to its standard output as
    raw 16-bit (``pcm16``) or float32 samples, and the (rate, channels) they come at."""
    info = probe(path)
    if stream >= len(info["audio"]):
        raise AudioError(
            f"{path}: has {len(info['audio'])} audio streams, stream {stream} requested "
            f"(a MUSDB18 .stem.mp4 has 5: mixture, drums, bass, other, vocals)"
        )
    meta = info["audio"][stream]
    channels, rate = int(meta["channels"]), int(meta["sample_rate"])
    out_rate = sample_rate or rate
    fmt = "s16le" if pcm16 else "f32le"
    cmd = [ffmpeg_binary(), "-v", "error", "-nostdin", "-i", str(path), "-map", f"0:a:{stream}"]
    return [*cmd, "-f", fmt, "-acodec", f"pcm_{fmt}", "-ar", str(out_rate), "-"], out_rate, channels


def _ffmpeg_decode(path: Path, stream: int, sample_rate: int | None, pcm16: bool) -> tuple[np.ndarray, int]:
    cmd, out_rate, channels = ffmpeg_decoder(path, stream, sample_rate, pcm16)
    result = subprocess.run(cmd, capture_output=True)
    if result.returncode != 0 or not result.stdout:
        raise AudioError(
            f"{path}: ffmpeg could not decode audio stream {stream}: "
            f"{result.stderr.decode(errors='replace').strip()[-500:] or 'no audio data'}"
        )
    if pcm16:
        return np.frombuffer(result.stdout, dtype="<i2").reshape(-1, channels) / np.float32(32768), out_rate
    return np.frombuffer(result.stdout, dtype="<f4").reshape(-1, channels).copy(), out_rate


def read_audio(path: str | Path, stream: int = 0, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Decode ``path`` to ``([samples, channels] float32, rate)``.

    ``sample_rate`` resamples (ffmpeg's resampler for compressed input, polyphase otherwise);
    ``stream`` picks an audio stream of a multi-stream file such as a ``.stem.mp4``. A
    ``.stem.mp4`` decodes to 16-bit PCM values, as musdb decodes MUSDB18: the references then
    match sigsep's bit for bit, and their quantization noise floor keeps BSSEval's projections
    well-conditioned (AAC decoded to float is hard band-limited, and museval's ISR/SIR/SAR turn
    into rounding noise; see ``bsseval``). Other compressed input decodes to float.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix in SOUNDFILE_SUFFIXES and stream == 0:
        import soundfile as sf  # here, not at the top: separate_track runs where soundfile is absent

        try:
            audio, rate = sf.read(path, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise AudioError(f"{path}: cannot read audio: {e}") from None
        if sample_rate and rate != sample_rate:
            audio, rate = resample(audio, rate, sample_rate), sample_rate
        return audio, rate
    if suffix in FFMPEG_SUFFIXES or suffix in SOUNDFILE_SUFFIXES:
        return _ffmpeg_decode(path, stream, sample_rate, pcm16=path.name.lower().endswith(".stem.mp4"))
    raise AudioError(
        f"{path}: unsupported format {suffix or '(no suffix)'}; use one of {', '.join(sorted(SUPPORTED_SUFFIXES))}"
    )


def read_stems(path: str | Path, names: tuple[str, ...] = tuple(STEM_STREAMS)) -> tuple[dict[str, np.ndarray], int]:
    """Streams of a MUSDB18 ``.stem.mp4`` by stem name, at their native rate."""
    stems, rate = {}, 0
    for name in names:
        stems[name], rate = read_audio(path, stream=STEM_STREAMS[name])
    return stems, rate


def resample(audio: np.ndarray, rate_from: int, rate_to: int) -> np.ndarray:
    """Polyphase resampling along time (scipy), float32 in and out."""
    if rate_from == rate_to:
        return audio
    from scipy.signal import resample_poly

    g = gcd(rate_from, rate_to)
    return resample_poly(audio, rate_to // g, rate_from // g, axis=0).astype(np.float32)


def to_stereo(audio: np.ndarray, path: str | Path = "audio") -> np.ndarray:
    """Mono is duplicated to both channels; more than two channels is refused."""
    if audio.shape[1] == 1:
        return np.repeat(audio, 2, axis=1)
    if audio.shape[1] != 2:
        raise AudioError(f"{path}: {audio.shape[1]} channels; only mono and stereo are supported")
    return audio


def write_audio(path: str | Path, audio: np.ndarray, sample_rate: int, subtype: str | None = None) -> None:
    """Write ``[samples, channels]`` audio (format from the suffix: wav, flac, ogg, mp3) atomically."""
    path = Path(path)
    formats = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".mp3": "MP3"}
    if path.suffix.lower() not in formats:
        raise AudioError(f"{path}: cannot write {path.suffix!r}; use .wav, .flac, .ogg or .mp3")
    fmt = formats[path.suffix.lower()]
    subtype = subtype or {"WAV": "FLOAT", "FLAC": "PCM_24", "OGG": "VORBIS", "MP3": "MPEG_LAYER_III"}[fmt]
    import soundfile as sf

    with atomic_path(path) as tmp:
        sf.write(tmp, np.asarray(audio, dtype=np.float32), sample_rate, format=fmt, subtype=subtype)
