"""How far a training window sliced from the cached whole-track STFT is from the official one.

The official code cuts a window of ``hop * (num_frame - 1)`` samples and takes its STFT
(``center=True``, reflect padding); the cache holds the STFT of the whole track and training slices
``num_frame`` frames of it. The frames whose ``n_fft`` span reaches past the window's edges differ:
there the official STFT sees reflected samples, ours the neighbouring audio. For every hop-aligned
window inside each real MUSDB18 excerpt of ../shared/musdb (every stem and the mixture; float32,
seed STFT: n_fft 4096, hop 1024, 128 frames) this prints, per frame position, the largest
difference of a bin relative to the window's largest STFT magnitude.

    .venv/bin/python benchmarks/window_edges.py [--step 1] [--quick]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch

from lightsaft.data.audio import read_stems
from lightsaft.spectral import SpectralFrontEnd, window_samples

N_FFT, HOP, NUM_FRAME = 4096, 1024, 128
STEMS = ("vocals", "drums", "bass", "other", "mixture")


def complex_stft(front: SpectralFrontEnd, wave: np.ndarray) -> np.ndarray:
    """``[2 channels, frames, bins]`` complex, from the front end's ``[Re L, Re R, Im L, Im R]``."""
    with torch.no_grad():
        spec = front.stft(torch.from_numpy(np.ascontiguousarray(wave))[None])[0].numpy()
    return spec[:2] + 1j * spec[2:]


def edge_errors(wave: np.ndarray, front: SpectralFrontEnd, step: int) -> tuple[int, np.ndarray]:
    """Windows compared, and per frame the largest ``|slice - own STFT| / max |own STFT|`` over them."""
    window = window_samples(NUM_FRAME, HOP)
    whole = complex_stft(front, wave)
    worst, offsets = np.zeros(NUM_FRAME), range(0, (len(wave) - window) // HOP + 1, step)
    for offset in offsets:
        own = complex_stft(front, wave[offset * HOP : offset * HOP + window])
        difference = np.abs(whole[:, offset : offset + NUM_FRAME] - own).max(axis=(0, 2))
        worst = np.maximum(worst, difference / np.abs(own).max())
    return len(offsets), worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step", type=int, default=1, help="compare every STEP-th hop-aligned window")
    parser.add_argument("--quick", action="store_true", help="one excerpt's mixture, every 10th window")
    args = parser.parse_args()
    shared = Path(os.environ.get("LIGHTSAFT_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    tracks = sorted((shared / "musdb" / "musdb18-7").glob("*/*.stem.mp4"))
    if not tracks:
        raise SystemExit(f"no MUSDB18 excerpts in {shared / 'musdb' / 'musdb18-7'} (set LIGHTSAFT_SHARED)")
    tracks, step, stems_compared = (tracks[:1], 10, ("mixture",)) if args.quick else (tracks, args.step, STEMS)
    front = SpectralFrontEnd(N_FFT, HOP)
    print(f"frames differing per {NUM_FRAME}-frame window, |diff| / max |X| (n_fft {N_FFT}, hop {HOP}, float32)")
    print(f"{'track':32s} {'stem':8s} {'windows':>7s} {'frame 0':>8s} {'1':>6s} {'126':>6s} {'127':>6s} {'2..125':>8s}")
    overall = np.zeros(NUM_FRAME)
    for path in tracks:
        stems, _ = read_stems(path)
        for stem in stems_compared:
            count, worst = edge_errors(stems[stem], front, step)
            overall = np.maximum(overall, worst)
            edges = " ".join(f"{worst[i]:{8 if i == 0 else 6}.3f}" for i in (0, 1, 126, 127))
            print(
                f"{path.name.removesuffix('.stem.mp4')[:32]:32s} {stem:8s} {count:7d} {edges} {worst[2:126].max():8.1e}"
            )
    differing = np.flatnonzero(overall > 1e-4).tolist()
    print(f"frames that differ: {differing} of {NUM_FRAME}; largest: {overall.max():.2f} of the window's peak")


if __name__ == "__main__":
    main()
