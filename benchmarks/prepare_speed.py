"""The prepare stage's speed: seconds of audio prepared per second, by number of jobs.

Synthetic tracks of MUSDB18 length (about 4 minutes; the real 7-second previews would measure
ffmpeg's start-up, not the stage) through ``lightsaft.prepare.prepare`` at the seed STFT (n_fft
4096, hop 1024, float16), all of them train tracks (the costly case: four spectrograms each),
with 1 job, 2 jobs and ``auto``, each into a fresh folder, then the time projected for MUSDB18
(every track costed as a train track: an upper bound for MUSDB18-HQ; a stem.mp4 also pays one
ffmpeg decode per stem, which this does not measure).

    python benchmarks/prepare_speed.py [--tracks 4] [--seconds 236] [--quick]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from lightsaft.config import defaults
from lightsaft.data.tracks import read_dataset
from lightsaft.download import download
from lightsaft.prepare import default_jobs, prepare
from lightsaft.spectral import SAMPLE_RATE

MUSDB18_HOURS = 10.0  # 150 tracks, 6.5 h train + 3.5 h test
HEADER = "audio s per s"


def synthetic_set(folder: Path, tracks: int, seconds: float) -> Path:
    data = defaults()["data"]
    data.update(source="synthetic", synthetic={"train_tracks": tracks, "valid_tracks": 1, "test_tracks": 1,
                                               "seconds": seconds, "seed": 0})  # fmt: skip
    dataset = download(data, folder / "raw")
    return dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracks", type=int, default=4, help="train tracks to prepare")
    parser.add_argument("--seconds", type=float, default=236.0, help="track length (MUSDB18's mean: 236 s)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 tracks of 2 s, tiny STFT, 1 job")
    args = parser.parse_args()
    n_fft, hop = (256, 64) if args.quick else (4096, 1024)
    if args.quick:
        args.tracks, args.seconds = 2, 2.0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        dataset = synthetic_set(folder, args.tracks, args.seconds)
        took = time.perf_counter() - started
        print(f"generated {args.tracks + 2} synthetic tracks of {args.seconds:g} s in {took:.0f} s")
        audio = sum(t["split"] == "train" for t in read_dataset(dataset)["tracks"]) * args.seconds
        rows = []
        for jobs in (1,) if args.quick else (1, 2, "auto"):  # --quick: no worker processes to start
            out = folder / f"cache-{jobs}"
            started = time.perf_counter()
            prepare(dataset, out, n_fft, hop, "float16", splits=("train",), jobs=jobs)
            wall = time.perf_counter() - started
            chosen = default_jobs(args.tracks) if jobs == "auto" else jobs
            rows.append((f"{jobs} ({chosen})" if jobs == "auto" else str(jobs), wall, audio / wall))
            shutil.rmtree(out)
    print(f"\nprepare, {audio:g} s of train audio (n_fft {n_fft}, hop {hop}, float16):")
    print(f"{'jobs':>10}{'wall s':>10}{HEADER:>16}{'MUSDB18 h':>12}")
    for jobs, wall, rate in rows:
        print(f"{jobs:>10}{wall:10.1f}{rate:16.1f}{MUSDB18_HOURS * 3600 / rate / 3600:12.2f}")
    print(f"(MUSDB18: {MUSDB18_HOURS:g} h of audio, every track costed as a train track: an upper bound; "
          f"sample rate {SAMPLE_RATE} Hz)")  # fmt: skip


if __name__ == "__main__":
    main()
