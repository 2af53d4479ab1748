"""The synthetic set: MUSDB18-HQ-shaped, deterministic, mixture = sum, stems of distinct character."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import soundfile as sf

from lightsaft.data.synthetic import generate, synthesize
from lightsaft.data.tracks import STEMS


def _digest(root) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.wav")):
        digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("synthetic") / "tree", 2, 1, 1, seconds=1.0, seed=3)


def test_tree_is_musdb18hq_shaped_and_mixture_is_the_sum(tree):
    assert sorted(p.name for p in (tree / "train").iterdir()) == [
        "synthetic train 000",
        "synthetic train 001",
        "synthetic valid 000",
    ]
    assert [p.name for p in (tree / "test").iterdir()] == ["synthetic test 000"]
    for folder in [*(tree / "train").iterdir(), *(tree / "test").iterdir()]:
        assert sorted(p.name for p in folder.iterdir()) == sorted(f"{s}.wav" for s in STEMS)
        audio = {}
        for stem in STEMS:
            info = sf.info(folder / f"{stem}.wav")
            assert (info.samplerate, info.channels, info.frames) == (44100, 2, 44100)
            audio[stem], _ = sf.read(folder / f"{stem}.wav", dtype="float32")
        stems_sum = audio["vocals"] + audio["drums"] + audio["bass"] + audio["other"]
        np.testing.assert_array_equal(audio["mixture"], stems_sum)
        assert 0.3 < np.abs(audio["mixture"]).max() < 0.9
        assert all(np.abs(audio[stem]).max() > 0.01 for stem in STEMS)


def test_seed_determines_the_set(tree, tmp_path):
    again = generate(tmp_path / "again", 2, 1, 1, seconds=1.0, seed=3)
    other = generate(tmp_path / "other", 2, 1, 1, seconds=1.0, seed=4)
    assert _digest(again) == _digest(tree)
    assert _digest(other) != _digest(tree)


def _band_share(x: np.ndarray, lo: float, hi: float) -> float:
    power = np.abs(np.fft.rfft(x.astype(np.float64).mean(axis=1))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / 44100)
    return power[(freqs >= lo) & (freqs < hi)].sum() / power.sum()


def _vibrato(x: np.ndarray) -> float:
    """Mean |frame-to-frame change| of the strongest partial, in semitones (sustained notes only)."""
    mono = x.astype(np.float64).mean(axis=1)
    frames = np.lib.stride_tricks.sliding_window_view(mono, 4096)[::512] * np.hanning(4096)
    spectra = np.abs(np.fft.rfft(frames, 16384))
    loud = spectra.max(axis=1) > 0.1 * spectra.max()
    peaks = np.maximum(np.fft.rfftfreq(16384, 1 / 44100)[spectra.argmax(axis=1)], 1.0)
    steps = np.abs(12 * np.log2(peaks[1:] / peaks[:-1]))
    steps = steps[loud[1:] & loud[:-1] & (steps < 0.9)]  # ignore note changes
    return float(steps.mean())


def test_stems_have_distinct_character():
    for index in range(4):
        stems = synthesize(np.random.default_rng([11, 0, index]), 4.0)
        assert _band_share(stems["bass"], 0, 300) > 0.9  # low notes
        assert _band_share(stems["drums"], 4000, 22050) > 0.05  # noise bursts ...
        for stem in ("bass", "vocals", "other"):  # ... where the tonal stems have next to nothing
            assert _band_share(stems[stem], 4000, 22050) < 0.015
        for stem in ("vocals", "other"):  # both in the mid band ...
            assert _band_share(stems[stem], 150, 4000) > 0.9
        assert _vibrato(stems["vocals"]) > 2 * _vibrato(stems["other"])  # ... told apart by vibrato


def test_tracks_vary():
    tracks = [synthesize(np.random.default_rng([0, 0, i]), 2.0) for i in range(6)]
    bass_notes = {int(np.argmax(np.abs(np.fft.rfft(t["bass"][:, 0].astype(float)))[:400])) for t in tracks}
    energy = [{stem: np.sum(audio.astype(float) ** 2) for stem, audio in t.items()} for t in tracks]
    vocal_share = [e["vocals"] / e["mixture"] for e in energy]
    assert len(bass_notes) >= 3  # different keys
    assert max(vocal_share) > 1.5 * min(vocal_share)  # different levels
