"""Speed of the separate and evaluate stages on this machine, extrapolated to MUSDB18's test set.

Separation: untrained models (speed does not depend on the weights) of the demo and the seed
config on one stereo noise track (60 s), default protocol and overlap, with the old fixed batches
(4: the CLI's, 8: the stage's) and ``auto`` (the default now: from the free memory) side by
side; real-time factor = seconds of audio per second of wall time. Evaluation: ``evaluate_tracks``
(estimate + mixture baseline, four targets) on two 60-second tracks with jobs=1 and jobs=2, so
that jobs=2 has two tracks to share out (``--engine``: fast, the default, or museval;
benchmarks/bsseval.py compares the two).

    .venv/bin/python benchmarks/separate_eval.py [--seconds 60] [--eval-seconds 60] [--engine fast] [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lightsaft.config import defaults, validate
from lightsaft.data.audio import write_audio
from lightsaft.evaluation.engines import evaluate_tracks
from lightsaft.model.params import MODEL
from lightsaft.model.unet import build_model
from lightsaft.separation.track import auto_batch_size, separate_track
from lightsaft.spectral import SAMPLE_RATE, TARGETS
from lightsaft.study.studies import load_study

TEST_SET_SECONDS = 3.5 * 3600  # MUSDB18 test set: 50 tracks, about 3.5 hours
TEST_TRACKS = 50
# --quick: a small model (the tests' tiny config), for a smoke run in seconds
TINY = {"n_fft": 256, "hop_length": 64, "num_frame": 16, "n_blocks": 5, "internal_channels": 8, "n_internal_layers": 2}
TINY.update(bn_factor=4, min_bn_units=4, num_tdfs=4, dk=8, embedding_dim=8)


def demo_model() -> dict:
    """The model section of `make demo` (experiments/demo.yaml over the defaults)."""
    study = load_study(Path(__file__).resolve().parents[1] / "experiments" / "demo.yaml")
    model = dict(defaults()["model"])
    model.update({k.split(".", 1)[1]: v for k, v in study.overrides.items() if k.startswith("model.")})
    return model


class MemoryCache:
    def __init__(self, audio: dict[str, dict[str, np.ndarray]]):
        self.audio = audio

    def tracks(self, split: str) -> list[str]:
        return list(self.audio)

    def load_audio(self, track: str, stems=None) -> dict[str, np.ndarray]:
        return self.audio[track]


def bench_separation(seconds: float, model_params: dict, separate: dict, batches: list) -> dict:
    """Real-time factor per batch size, on one track, batches interleaved after a warm-up."""
    torch.manual_seed(0)
    model = build_model(model_params)
    mixture = (np.random.default_rng(0).standard_normal((round(seconds * SAMPLE_RATE), 2)) * 0.1).astype(np.float32)
    separate_track(model, mixture[:SAMPLE_RATE], device="cpu", **separate)  # warm-up
    rtf = {}
    for batch in batches:
        start = time.perf_counter()
        separate_track(model, mixture, batch_size=batch, device="cpu", **separate)
        rtf[batch] = seconds / (time.perf_counter() - start)
    return rtf


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
            result = evaluate_tracks(MemoryCache(tracks), tmp, jobs=jobs, engine=engine, device="cpu")
            walls[jobs] = time.perf_counter() - start
            assert not result.failed
    return walls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="separation benchmark track length")
    parser.add_argument("--eval-seconds", type=float, default=60.0, help="length of each evaluated track")
    parser.add_argument("--eval-tracks", type=int, default=2)
    parser.add_argument("--engine", default=defaults()["evaluate"]["engine"], choices=["fast", "museval"])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model, 1 s tracks (seconds)")
    args = parser.parse_args()
    params = defaults()
    if args.quick:
        args.seconds, args.eval_seconds = 1.0, 1.0
        params["model"] = dict(params["model"], **TINY)
    separate = validate(params)["separate"]
    configs = {"tiny": params["model"]} if args.quick else {"demo": demo_model(), "seed": params["model"]}
    batches = [4, "auto"] if args.quick else [4, 8, "auto"]
    threads = torch.get_num_threads()
    print(f"separation, {args.seconds:g} s track, CPU, {threads} threads: real-time factor (s audio per s)")
    print(f"{'config':8}" + "".join(f"{'batch ' + str(b):>12}" for b in batches) + f"{'auto':>8}{'test set h':>12}")
    rtfs = {}
    for name, model_params in configs.items():
        rtfs[name] = rtf = bench_separation(args.seconds, model_params, separate, batches)
        chosen = auto_batch_size(MODEL.validate(model_params), torch.device("cpu"))
        print(
            f"{name:8}" + "".join(f"{rtf[b]:12.3f}" for b in batches)
            + f"{chosen:8d}{TEST_SET_SECONDS / rtf['auto'] / 3600:12.1f}"
        )  # fmt: skip
    rtf = rtfs["tiny" if args.quick else "seed"]["auto"]
    sep_hours = TEST_SET_SECONDS / rtf / 3600
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
