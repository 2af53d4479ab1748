"""A deterministic, MUSDB18-HQ-shaped toy data set for offline demos and tests.

Each track is a short seeded "song": a key, a tempo, a chord progression, and four stems of
clearly different character, so that a small model learns to separate them in minutes:

* bass: low notes (40-80 Hz roots) with few harmonics;
* drums: kick sweeps and noise bursts (snare, hi-hats) on a groove;
* vocals: a legato melody in the mid band with vibrato and vowel formants;
* other: chords (pads, arpeggios or stabs) in the same mid band, steady, without vibrato.

Keys, tempi, styles, levels and pans vary per track, so a model must listen rather than
memorise. Stems are 16-bit, so ``mixture.wav`` is exactly the sum of the four stem files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import butter, sosfilt

from ..paths import atomic_dir
from ..spectral import SAMPLE_RATE, TARGETS
from .params import synthetic_track_names

SCALES = ((0, 2, 4, 5, 7, 9, 11), (0, 2, 3, 5, 7, 8, 10))  # major, natural minor
VOWELS = ((800, 1200), (500, 1900), (300, 2300), (500, 900), (350, 800))  # formants F1, F2 (Hz)
TABLE = 4096  # samples per period of the wavetable oscillator
_SPLITS = {"train": 0, "valid": 1, "test": 2}


def track_names(split: str, count: int) -> list[str]:
    """Names of the synthetic tracks of a split (valid tracks live in ``train/``)."""
    return synthetic_track_names(split, count)


def generate(
    out_dir: str | Path, train_tracks: int, valid_tracks: int, test_tracks: int, seconds: float, seed: int
) -> Path:
    """Write ``out_dir/{train,test}/<track>/{mixture,vocals,drums,bass,other}.wav`` atomically."""
    with atomic_dir(out_dir) as tmp:
        for split, count in (("train", train_tracks), ("valid", valid_tracks), ("test", test_tracks)):
            for index, name in enumerate(track_names(split, count)):
                rng = np.random.default_rng([seed, _SPLITS[split], index])
                folder = tmp / ("test" if split == "test" else "train") / name
                folder.mkdir(parents=True)
                for stem, audio in synthesize(rng, seconds).items():
                    sf.write(folder / f"{stem}.wav", audio, SAMPLE_RATE, subtype="PCM_16")
    return Path(out_dir)


def synthesize(rng: np.random.Generator, seconds: float) -> dict[str, np.ndarray]:
    """One track: int16 ``[samples, 2]`` per stem, plus their exact sum as ``mixture``."""
    length = round(seconds * SAMPLE_RATE)
    song = _Song(rng, length)
    stems = {"vocals": song.vocals(), "drums": song.drums(), "bass": song.bass(), "other": song.other()}
    levels = {"vocals": (-6, 0), "drums": (-8, 0), "bass": (-8, -1), "other": (-10, -2)}
    pans = {"vocals": 0.3, "drums": 0.2, "bass": 0.15, "other": 0.7}
    for name, mono in stems.items():
        rms = np.sqrt(np.mean(mono**2)) + 1e-9
        gain = 10 ** (rng.uniform(*levels[name]) / 20) / rms
        stems[name] = _pan(mono * gain, rng.uniform(-1, 1) * pans[name])
    total = sum(stems.values())
    scale = rng.uniform(0.5, 0.85) / (np.abs(total).max() + 1e-9)
    out = {name: np.round(stems[name] * scale * 32768).astype(np.int16) for name in TARGETS}
    out["mixture"] = sum(out[name].astype(np.int32) for name in TARGETS).astype(np.int16)
    return out


def _pan(mono: np.ndarray, pan: float) -> np.ndarray:
    """Constant-power pan, -1 (left) to 1 (right)."""
    angle = (pan + 1) * np.pi / 4
    return np.stack([mono * np.cos(angle), mono * np.sin(angle)], axis=1)


def _hz(midi: float | np.ndarray) -> float | np.ndarray:
    return 440.0 * 2 ** ((np.asarray(midi) - 69) / 12)


def _table(amplitudes: np.ndarray) -> np.ndarray:
    """One period of a sum of harmonics (``amplitudes[k]`` for harmonic k+1), wrap-padded."""
    phase = np.arange(TABLE + 1) / TABLE * 2 * np.pi
    k = np.arange(1, len(amplitudes) + 1)[:, None]
    return (amplitudes[:, None] * np.sin(k * phase)).sum(axis=0)


def _oscillate(table: np.ndarray, f0: np.ndarray | float, count: int, phase0: float = 0.0) -> np.ndarray:
    """Play a wavetable at frequency ``f0`` (Hz, constant or per sample), linear interpolation."""
    f0 = np.broadcast_to(np.asarray(f0, dtype=np.float64), (count,))
    cycles = (phase0 + np.cumsum(f0) / SAMPLE_RATE) % 1.0 * TABLE
    i = cycles.astype(np.int64)
    frac = cycles - i
    return table[i] * (1 - frac) + table[i + 1] * frac


def _envelope(count: int, attack: float, decay: float | None, release: float = 0.01) -> np.ndarray:
    """Attack ramp, optional exponential decay (time constant, s), short release at the end."""
    t = np.arange(count) / SAMPLE_RATE
    env = np.minimum(1.0, t / attack)
    if decay is not None:
        env = env * np.exp(-t / decay)
    tail = min(count, int(release * SAMPLE_RATE))
    if tail:
        env[-tail:] *= np.linspace(1, 0, tail)
    return env


class _Song:
    """Key, tempo, bars and chords shared by the four stems of one track."""

    def __init__(self, rng: np.random.Generator, length: int):
        self.rng, self.length = rng, length
        self.key = int(rng.integers(12))
        self.scale = SCALES[int(rng.integers(2))]
        self.step = round(60 / rng.uniform(80, 150) / 4 * SAMPLE_RATE)  # a sixteenth note, samples
        bars = -(-length // (16 * self.step))
        progression = [0] + list(rng.choice([1, 2, 3, 4, 5], size=3))
        self.chords = [int(progression[b % 4]) for b in range(bars)]

    def pitch(self, degree: int, base: int) -> int:
        """MIDI note of a scale degree, in the octave at or above ``base``."""
        pc = self.key + self.scale[degree % 7]
        return base + (pc - base) % 12 + 12 * (degree // 7)

    def _place(self, out: np.ndarray, start: int, sound: np.ndarray) -> None:
        end = min(self.length, start + len(sound))
        if end > start:
            out[start:end] += sound[: end - start]

    def _notes(
        self,
        out: np.ndarray,
        notes: list[tuple[int, int, float]],
        table: np.ndarray,
        attack: float,
        decay: float | None,
    ) -> np.ndarray:
        for start, count, midi in notes:
            self._place(
                out, start, _oscillate(table, _hz(midi), count, self.rng.random()) * _envelope(count, attack, decay)
            )
        return out

    def bass(self) -> np.ndarray:
        rng, bar = self.rng, 16 * self.step
        k = np.arange(1, 7)
        table = _table(1 / k ** rng.uniform(1.2, 2.0))
        quarters = rng.random() < 0.5
        pattern = [(s, 4) for s in range(0, 16, 4)] if quarters else [(s, 2) for s in range(0, 16, 2)]
        notes = []
        for b, degree in enumerate(self.chords):
            for s, dur in pattern:
                fifth = rng.random() < 0.2
                notes.append(
                    (b * bar + s * self.step, int(dur * self.step * 0.9), self.pitch(degree + (4 if fifth else 0), 28))
                )
        return self._notes(np.zeros(self.length), notes, table, 0.005, rng.uniform(0.3, 0.8))

    def drums(self) -> np.ndarray:
        rng, out = self.rng, np.zeros(self.length)
        noise = rng.standard_normal(self.length + SAMPLE_RATE)
        snare_noise = sosfilt(butter(2, [1000, 6000], "bandpass", fs=SAMPLE_RATE, output="sos"), noise)
        hat_noise = sosfilt(butter(4, 7000, "highpass", fs=SAMPLE_RATE, output="sos"), noise)
        t = np.arange(int(0.35 * SAMPLE_RATE)) / SAMPLE_RATE
        low = rng.uniform(40, 60)
        sweep = low + 2 * low * np.exp(-t / 0.03)  # Hz: a fast pitch drop
        kick = np.sin(2 * np.pi * np.cumsum(sweep) / SAMPLE_RATE) * np.exp(-t / 0.15)
        snare_tone = rng.uniform(160, 240)
        hats = 1 if rng.random() < 0.4 else 2  # sixteenths or eighths
        for step in range(0, -(-self.length // self.step)):
            start, beat = step * self.step, step % 16
            velocity = rng.uniform(0.7, 1.0)
            if beat in (0, 8) or (beat % 2 == 0 and rng.random() < 0.1):
                self._place(out, start, 1.2 * velocity * kick)
            if beat in (4, 12):
                n = len(t) * 5 // 7
                body = snare_noise[start : start + n] * np.exp(-t[:n] / 0.08)
                self._place(
                    out,
                    start,
                    velocity * (body / 3 + 0.4 * np.sin(2 * np.pi * snare_tone * t[:n]) * np.exp(-t[:n] / 0.04)),
                )
            if beat % hats == 0 and rng.random() < 0.9:
                n = len(t) // 4 if rng.random() < 0.9 else len(t)
                self._place(out, start, velocity * 0.4 * hat_noise[start : start + n] * np.exp(-t[:n] / 0.03))
        return out

    def vocals(self) -> np.ndarray:
        """A legato melody with delayed vibrato and a vowel (two formants) per note."""
        rng, out = self.rng, np.zeros(self.length)
        rate, depth = rng.uniform(4.5, 6.5), rng.uniform(0.25, 0.6)  # Hz, semitones
        degree, position = int(rng.integers(9, 14)), 0
        while position < self.length:
            count = int(rng.choice([2, 3, 4, 6, 8])) * self.step
            if rng.random() < 0.2:  # a breath
                position += count
                continue
            degree = int(np.clip(degree + rng.integers(-2, 3), 7, 17))
            f = _hz(self.pitch(degree, 45))
            t = np.arange(count) / SAMPLE_RATE
            f0 = f * 2 ** (depth / 12 * np.sin(2 * np.pi * rate * t) * np.minimum(1, t / 0.25))
            f1, f2 = VOWELS[int(rng.integers(len(VOWELS)))]
            k = np.arange(1, int(5000 // f) + 1)
            amps = 1 / (1 + ((k * f - f1) / 150) ** 2) + 0.5 / (1 + ((k * f - f2) / 200) ** 2) + 0.03 / k
            note = _oscillate(_table(amps), f0, count) * _envelope(count, 0.04, None, 0.06)
            self._place(out, position, note)
            position += count
        return out

    def other(self) -> np.ndarray:
        """Chords of the progression: sustained pads, eighth-note arpeggios or off-beat stabs."""
        rng, out, bar = self.rng, np.zeros(self.length), 16 * self.step
        k = np.arange(1, 13)
        table = _table(1 / k ** rng.uniform(0.8, 1.6))
        style = int(rng.integers(3))
        notes: list[tuple[int, int, float]] = []
        for b, degree in enumerate(self.chords):
            chord = [self.pitch(degree + d, 52) for d in (0, 2, 4)]
            if style == 0:
                notes += [(b * bar, bar, m + detune) for m in chord for detune in (-0.05, 0.05)]
            elif style == 1:
                notes += [(b * bar + s * self.step, 2 * self.step, chord[s // 2 % 3]) for s in range(0, 16, 2)]
            else:
                notes += [(b * bar + s * self.step, self.step, m) for s in (2, 6, 10, 14) for m in chord]
        attack, decay = ((0.15, None), (0.005, 0.2), (0.005, 0.08))[style]
        return self._notes(out, notes, table, attack, decay)
