"""Training batches per second: the spectrogram cache vs. reading wav stems + STFT per item.

Seed config (batch 8, num_frame 128, n_fft 4096, hop 1024), 0 and 2 DataLoader workers, on a
synthetic set of a few minutes built under /tmp. Loaders, side by side (interleaved in each
repeat, median of the repeats):

* cache: what training uses (``train_batches``: a whole batch assembled in place per fetch);
* cache, item by item: the same items through ``__getitem__`` and ``default_collate``;
* wav windows + STFT: what the official recipe's data path does per item (read a random window
  of each stem from its wav file, sum in the time domain, STFT the mixture and the target);
* whole wav + STFT: the same, reading each stem file whole and slicing it, as the official
  loader does without its RAM cache.

The cache's batches/s is the training step rate it can feed (a GPU step faster than that waits
for data). Also prints the cache size per second of audio and its extrapolation to MUSDB18.

    python benchmarks/loader.py [--seconds 20] [--tracks 12] [--batches 20] [--repeats 5] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tabulate import tabulate
from torch.utils.data import DataLoader, Dataset

from lightsaft.config import defaults
from lightsaft.data.cache import Cache
from lightsaft.data.datasets import TrainDataset, train_batches
from lightsaft.data.tracks import read_dataset
from lightsaft.download import download
from lightsaft.prepare import prepare
from lightsaft.spectral import SAMPLE_RATE, TARGETS, SpectralFrontEnd, window_samples

SEED = {"n_fft": 4096, "hop": 1024, "num_frame": 128, "batch": 8}
TINY = {"n_fft": 256, "hop": 64, "num_frame": 16, "batch": 4}  # --quick: the tests' tiny config
MUSDB_TRAIN_HOURS, MUSDB_VALID_TRACKS, MUSDB_TEST_HOURS = 6.7, 14, 3.5
HEADER = "batches/s by loader"


class OnTheFly(Dataset):
    """The uncached baseline: four random wav windows, time-domain sum, two STFTs per item.

    ``whole_track``: read each stem file whole and slice it, as the official loader does without
    its RAM cache (musdb's ``track.targets[name].audio`` has no chunk set there).
    """

    def __init__(self, dataset_json: Path, config: dict, length: int, whole_track: bool = False):
        self.whole_track = whole_track
        self.files = [t["files"] for t in read_dataset(dataset_json)["tracks"] if t["split"] == "train"]
        self.frames = [sf.info(f["mixture"]).frames for f in self.files]
        self.window, self.length = window_samples(config["num_frame"], config["hop"]), length
        self.front = SpectralFrontEnd(config["n_fft"], config["hop"])

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


class ItemByItem(Dataset):
    """A dataset seen through ``__getitem__`` only (DataLoader then stacks the items)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index]


def time_batches(loader: DataLoader, batches: int, workers: int) -> float:
    """Batches per second of one pass, after a warm-up (worker start, first page faults)."""
    iterator = iter(loader)
    for _ in range(max(2, workers)):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches / (time.perf_counter() - start)


def make_set(folder: Path, config: dict, tracks: int, seconds: float) -> tuple[Path, Cache]:
    data = defaults()["data"]
    data.update(
        source="synthetic",
        synthetic={"train_tracks": tracks, "valid_tracks": 1, "test_tracks": 1, "seconds": seconds, "seed": 0},
    )
    dataset_json = download(data, folder / "raw")
    cache = Cache(prepare(dataset_json, folder / "cache", config["n_fft"], config["hop"], "float16"))
    return dataset_json, cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each synthetic track")
    parser.add_argument("--tracks", type=int, default=12, help="synthetic train tracks")
    parser.add_argument("--batches", type=int, default=20, help="timed batches per run")
    parser.add_argument("--repeats", type=int, default=5, help="runs per measurement (the median counts)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny config, 2 short tracks, 1 run")
    args = parser.parse_args()
    config = TINY if args.quick else SEED
    if args.quick:
        args.seconds, args.tracks, args.batches, args.repeats = 2.0, 2, 3, 1
    torch.set_num_threads(1)  # one core per loader process, as in a DataLoader worker

    with tempfile.TemporaryDirectory(prefix="lightsaft-bench-") as tmp:
        dataset_json, cache = make_set(Path(tmp), config, args.tracks, args.seconds)
        train_seconds = sum(cache.samples(n) for n in cache.tracks("train")) / SAMPLE_RATE
        spec_bytes = sum((cache.path / t["spec"]).stat().st_size for t in cache.manifest["tracks"] if "spec" in t)
        mb_per_second = spec_bytes / 1e6 / train_seconds

        batch, length = config["batch"], (args.batches + 4) * config["batch"]
        cached = TrainDataset(cache, config["num_frame"], items_per_epoch=length)
        datasets = {
            "cache": cached,
            "cache, item by item": ItemByItem(cached),
            "wav windows + STFT": OnTheFly(dataset_json, config, length),
            "whole wav + STFT": OnTheFly(dataset_json, config, length, whole_track=True),
        }
        baseline = "wav windows + STFT"
        rows = []
        for workers in (0, 2):
            torch.manual_seed(0)
            loaders = {
                name: (train_batches if name == "cache" else DataLoader)(
                    ds, batch_size=batch, num_workers=workers, persistent_workers=workers > 0
                )
                for name, ds in datasets.items()
            }
            runs: dict[str, list[float]] = {name: [] for name in loaders}
            for _ in range(args.repeats):  # interleaved: each loader sees the same machine load
                for name, loader in loaders.items():
                    runs[name].append(time_batches(loader, args.batches, workers))
            rate = {name: statistics.median(r) for name, r in runs.items()}
            rows.append([workers] + [f"{rate[name]:.2f} ({rate[name] / rate[baseline]:.1f}x)" for name in loaders])
            del loaders  # stop the workers

    print(
        f"\n{args.tracks} train tracks x {args.seconds:g} s ({train_seconds / 60:.1f} min), batch {batch}, "
        f"num_frame {config['num_frame']}, n_fft {config['n_fft']}, hop {config['hop']}, torch threads 1 per "
        f"process; median of {args.repeats} runs of {args.batches} batches (x = speed relative to {baseline})"
    )
    print(HEADER)
    print(tabulate(rows, headers=["workers", *datasets], stralign="right"))
    print(
        "the cache loader feeds up to "
        + ", ".join(f"{row[1].split()[0]} training steps/s with {row[0]} workers" for row in rows)
        + f" at batch {batch} (a faster GPU step waits for data)"
    )

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
