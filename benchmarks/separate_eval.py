"""Speed of the separate and evaluate stages on this machine, extrapolated to MUSDB18's test set.

Separation: an untrained seed-config model (speed does not depend on the weights) on a stereo
noise track, at the default overlap and batch size; real-time factor = seconds of audio per
second of wall time. Evaluation: ``evaluate_tracks`` (estimate + mixture baseline, four targets)
on two 60-second tracks with jobs=1 and jobs=2, so that jobs=2 has two tracks to share out
(``--engine``: fast, the default, or museval; benchmarks/bsseval.py compares the two).

    .venv/bin/python benchmarks/separate_eval.py [--seconds 8] [--eval-seconds 60] [--engine fast] [--quick]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lightsaft.config import defaults, validate
from lightsaft.data.audio import write_audio
from lightsaft.evaluate import evaluate_tracks
from lightsaft.model import build_model
from lightsaft.separate import crossfade, edge_trim, separate_track
from lightsaft.spectral import SAMPLE_RATE, TARGETS, window_samples

TEST_SET_SECONDS = 3.5 * 3600  # MUSDB18 test set: 50 tracks, about 3.5 hours
TEST_TRACKS = 50
# --quick: a small model (the tests' tiny config), for a smoke run in seconds
TINY = {"n_fft": 256, "hop_length": 64, "num_frame": 16, "n_blocks": 5, "internal_channels": 8, "n_internal_layers": 2}
TINY.update(bn_factor=4, min_bn_units=4, num_tdfs=4, dk=8, embedding_dim=8)


class MemoryCache:
    def __init__(self, audio: dict[str, dict[str, np.ndarray]]):
        self.audio = audio

    def tracks(self, split: str) -> list[str]:
        return list(self.audio)

    def load_audio(self, track: str, stems=None) -> dict[str, np.ndarray]:
        return self.audio[track]


def chunks_for(seconds: float, params: dict, overlap: float) -> int:
    """Model windows ``separate_track`` runs for a track of ``seconds`` (the same arithmetic)."""
    window = window_samples(params["num_frame"], params["hop_length"])
    fade, step = crossfade(window - 2 * edge_trim(params["hop_length"], params["num_frame"]), overlap)
    return math.ceil((round(seconds * SAMPLE_RATE) + len(fade) - step) / step)


def bench_separation(seconds: float, separate: dict, params: dict) -> tuple[float, float]:
    """Returns (real-time factor, projected hours for the test set)."""
    torch.manual_seed(0)
    model = build_model(params)
    mixture = (np.random.default_rng(0).standard_normal((round(seconds * SAMPLE_RATE), 2)) * 0.1).astype(np.float32)
    separate_track(model, mixture[:SAMPLE_RATE], **separate)  # warm-up
    start = time.perf_counter()
    separate_track(model, mixture, **separate)
    wall = time.perf_counter() - start
    per_chunk = wall / chunks_for(seconds, params, separate["overlap"])
    track = TEST_SET_SECONDS / TEST_TRACKS
    projected = TEST_TRACKS * chunks_for(track, params, separate["overlap"]) * per_chunk
    print(
        f"separation  {'tiny' if params['n_fft'] < 1024 else 'seed'} config, {seconds:g} s track, "
        f"overlap {separate['overlap']}, batch {separate['batch_size']}, "
        f"{torch.get_num_threads()} threads: {wall:.1f} s wall, "
        f"{per_chunk:.1f} s per window x 4 targets, real-time factor {seconds / wall:.3f} "
        f"(s audio per s)"
    )
    return seconds / wall, projected / 3600


def bench_evaluation(seconds: float, n_tracks: int, jobs_list: list[int], engine: str) -> dict[int, float]:
    rng = np.random.default_rng(0)
    tracks = {}
    for i in range(n_tracks):
        stems = {t: (rng.standard_normal((round(seconds * SAMPLE_RATE), 2)) * 0.1).astype(np.float32) for t in TARGETS}
        stems["mixture"] = sum(stems.values())
        tracks[f"track {i}"] = stems
    walls = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, stems in tracks.items():
            for target in TARGETS:
                noisy = stems[target] + 0.05 * rng.standard_normal(stems[target].shape)
                write_audio(Path(tmp) / "test" / name / f"{target}.wav", noisy, SAMPLE_RATE)
        for jobs in jobs_list:
            start = time.perf_counter()
            result = evaluate_tracks(MemoryCache(tracks), tmp, None, jobs=jobs, engine=engine, device="cpu")
            walls[jobs] = time.perf_counter() - start
            assert not result.failed
    return walls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="separation benchmark track length")
    parser.add_argument("--eval-seconds", type=float, default=60.0, help="length of each evaluated track")
    parser.add_argument("--eval-tracks", type=int, default=2)
    parser.add_argument("--engine", default=defaults()["evaluate"]["engine"], choices=["fast", "museval"])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model, 1 s tracks (seconds)")
    args = parser.parse_args()
    params = defaults()
    if args.quick:
        args.seconds, args.eval_seconds = 1.0, 1.0
        params["model"] = dict(params["model"], **TINY)
    separate = dict(validate(params)["separate"])
    separate["device"] = "cpu"
    rtf, sep_hours = bench_separation(args.seconds, separate, params["model"])
    jobs_list = [1] if args.quick else [1, 2]  # --quick: no worker processes to start
    walls = bench_evaluation(args.eval_seconds, args.eval_tracks, jobs_list, args.engine)
    audio = args.eval_seconds * args.eval_tracks
    print(
        f"evaluation  ({args.engine} engine) {args.eval_tracks} tracks x {args.eval_seconds:g} s, 4 targets, "
        "estimate + baseline:"
    )
    print(f"{'':12}{'wall s':>8}{'s per audio s':>15}{'speed-up':>10}{'test set (h)':>14}")
    for jobs, wall in walls.items():
        print(
            f"{'jobs=' + str(jobs):12}{wall:8.1f}{wall / audio:15.3f}{walls[1] / wall:10.2f}"
            f"{wall / audio * TEST_SET_SECONDS / 3600:14.2f}"
        )
    print(
        f"test set ({TEST_TRACKS} tracks, {TEST_SET_SECONDS / 3600:g} h of audio) on this machine: "
        f"separate {sep_hours:.1f} h (CPU), evaluate {walls[jobs_list[-1]] / audio * TEST_SET_SECONDS / 3600:.1f} h "
        f"(jobs={jobs_list[-1]}); real-time factor {rtf:.3f}"
    )


if __name__ == "__main__":
    main()
