"""Training batches per second: the spectrogram cache vs. reading wav stems + STFT per item.

Seed config (batch 8, num_frame 128, n_fft 4096, hop 1024), 0 and 2 DataLoader workers, on a
synthetic set of a few minutes built under /tmp. The on-the-fly loader does what the official
recipe's data path does per item: read a random window of each stem from its wav file, sum
in the time domain, STFT the mixture and the target. Also prints the cache size per second of
audio and its extrapolation to full MUSDB18.

    python benchmarks/loader.py [--seconds 20] [--tracks 12] [--batches 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import DataLoader, Dataset

from lightsaft.config import defaults
from lightsaft.data.cache import Cache
from lightsaft.data.datasets import TrainDataset
from lightsaft.download import download
from lightsaft.prepare import prepare
from lightsaft.spectral import SAMPLE_RATE, TARGETS, SpectralFrontEnd, window_samples

N_FFT, HOP, NUM_FRAME, BATCH = 4096, 1024, 128, 8
MUSDB_TRAIN_HOURS, MUSDB_VALID_TRACKS, MUSDB_TEST_HOURS = 6.7, 14, 3.5


class OnTheFly(Dataset):
    """The uncached baseline: four random wav windows, time-domain sum, two STFTs per item.

    ``whole_track``: read each stem file whole and slice it, as the official loader does without
    its RAM cache (musdb's ``track.targets[name].audio`` has no chunk set there).
    """

    def __init__(self, dataset_json: Path, length: int, whole_track: bool = False):
        self.whole_track = whole_track
        tracks = json.loads(dataset_json.read_text())["tracks"]
        self.files = [t["files"] for t in tracks if t["split"] == "train"]
        self.frames = [sf.info(f["mixture"]).frames for f in self.files]
        self.window, self.length = window_samples(NUM_FRAME, HOP), length
        self.front = SpectralFrontEnd(N_FFT, HOP)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        condition = int(torch.randint(4, ()))
        stems = []
        for target in TARGETS:
            k = int(torch.randint(len(self.files), ()))
            start = int(torch.randint(self.frames[k] - self.window, ()))
            if self.whole_track:
                audio = sf.read(self.files[k][target])[0].astype(np.float32)[start : start + self.window]
            else:
                audio, _ = sf.read(self.files[k][target], start=start, frames=self.window, dtype="float32")
            stems.append(torch.from_numpy(audio))
        with torch.no_grad():
            spec = self.front.stft(torch.stack([sum(stems), stems[condition]]))
        return spec[0], spec[1], torch.tensor(condition)


def batches_per_second(dataset: Dataset, workers: int, batches: int, repeats: int) -> float:
    """Best of ``repeats`` timed runs: the machine is shared, the best run is the least disturbed."""
    torch.manual_seed(0)
    loader = DataLoader(dataset, batch_size=BATCH, num_workers=workers, persistent_workers=workers > 0)
    best = 0.0
    for _ in range(repeats):
        iterator = iter(loader)
        for _ in range(max(2, workers)):  # warm-up: worker start, first page faults
            next(iterator)
        start = time.perf_counter()
        for _ in range(batches):
            next(iterator)
        best = max(best, batches / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each synthetic track")
    parser.add_argument("--tracks", type=int, default=12, help="synthetic train tracks")
    parser.add_argument("--batches", type=int, default=20, help="timed batches per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (the best counts)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core per loader process, as in a DataLoader worker

    with tempfile.TemporaryDirectory(prefix="lightsaft-bench-") as tmp:
        data = defaults()["data"]
        data.update(
            source="synthetic",
            synthetic={
                "train_tracks": args.tracks,
                "valid_tracks": 1,
                "test_tracks": 1,
                "seconds": args.seconds,
                "seed": 0,
            },
        )
        dataset_json = download(data, Path(tmp) / "raw")
        cache = Cache(prepare(dataset_json, Path(tmp) / "cache", N_FFT, HOP, "float16"))
        train_seconds = sum(cache.samples(n) for n in cache.tracks("train")) / SAMPLE_RATE
        spec_bytes = sum((cache.path / t["spec"]).stat().st_size for t in cache.manifest["tracks"] if "spec" in t)
        mb_per_second = spec_bytes / 1e6 / train_seconds

        length = (args.batches + 4) * BATCH
        loaders = {
            "cache": TrainDataset(cache, NUM_FRAME, items_per_epoch=length),
            "wav windows + STFT": OnTheFly(dataset_json, length),
            "whole wav + STFT": OnTheFly(dataset_json, length, whole_track=True),
        }
        print(
            f"\n{args.tracks} train tracks x {args.seconds:.0f} s ({train_seconds / 60:.1f} min), "
            f"batch {BATCH}, num_frame {NUM_FRAME}, n_fft {N_FFT}, hop {HOP}, torch threads 1 per "
            f"process; batches/s (speed-up of the cache)"
        )
        print(f"{'workers':>8}" + "".join(f"{name:>24}" for name in loaders))
        for workers in (0, 2):
            rate = {name: batches_per_second(ds, workers, args.batches, args.repeats) for name, ds in loaders.items()}
            print(f"{workers:>8}" + "".join(f"{r:>16.2f} ({rate['cache'] / r:4.1f}x)" for r in rate.values()))

    waveform_mb = len(TARGETS + ("mixture",)) * 2 * 4 * SAMPLE_RATE / 1e6  # float32 stereo, 5 stems
    train_hours = MUSDB_TRAIN_HOURS * (100 - MUSDB_VALID_TRACKS) / 100
    valid_hours = MUSDB_TRAIN_HOURS - train_hours
    print(f"\ncache: {mb_per_second:.2f} MB per second of audio (four float16 stem spectrograms)")
    print(
        f"full MUSDB18 (assuming equal track lengths): 86 train tracks ~{train_hours:.1f} h -> "
        f"{train_hours * 3600 * mb_per_second / 1e3:.0f} GB of spectrograms; valid ({valid_hours:.1f} h) + "
        f"test ({MUSDB_TEST_HOURS} h) waveforms {waveform_mb:.2f} MB/s -> "
        f"{(valid_hours + MUSDB_TEST_HOURS) * 3600 * waveform_mb / 1e3:.0f} GB for .stem.mp4 "
        f"(0 for MUSDB18-HQ: the wav files are read in place)"
    )


if __name__ == "__main__":
    main()
