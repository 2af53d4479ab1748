"""Training items mixed in the STFT domain, validation windows, seeded randomness across workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import ROCK, shared_path, stft
from pytorch_lightning import seed_everything
from torch.utils.data import DataLoader

from lightsaft.data.audio import read_stems
from lightsaft.data.datasets import (
    Draw,
    TrainDataset,
    ValidDataset,
    collate,
    epoch_length,
    seed_draws,
    train_batches,
)
from lightsaft.errors import DataError
from lightsaft.spectral import TARGETS, edge_trim

NUM_FRAME = 16
WINDOW = 64 * (NUM_FRAME - 1)  # 960 samples of the small cache (hop 64)
TRACK = 44100  # samples of each small-cache track


def _window(cache, track: str, k: int, offset: int, num_frame: int = NUM_FRAME) -> np.ndarray:
    return np.asarray(cache.spec(track)[k, :, offset : offset + num_frame], dtype=np.float32)


def test_epoch_length_and_item_layout(small_cache):
    dataset = TrainDataset(small_cache, NUM_FRAME)
    # official MusdbTrainSet.__len__: 4 x whole windows of hop * (num_frame - 1) samples per track
    assert len(dataset) == epoch_length([TRACK] * 3, WINDOW) == 4 * 3 * (44100 // 960) == 540
    assert epoch_length([130048 * 2 + 5, 130047], 130048) == 8  # the seed config: 2 windows + 0
    assert len(TrainDataset(small_cache, NUM_FRAME, items_per_epoch=10)) == 10
    mixture, target, condition = dataset[0]
    assert mixture.shape == target.shape == (4, NUM_FRAME, 129)
    assert mixture.dtype == target.dtype == torch.float32
    assert condition.dtype == torch.int64 and condition.dim() == 0 and 0 <= condition < 4


@pytest.mark.parametrize("augment", [False, True])
def test_item_is_the_sum_of_its_cached_windows(small_cache, augment):
    dataset = TrainDataset(small_cache, NUM_FRAME, augment_gain=augment, augment_channel_swap=augment)
    torch.manual_seed(0)
    swapped = False
    for _ in range(20):
        draw = dataset.draw()
        mixture, target, condition = dataset.assemble(draw)
        stems = []
        for k, (track, offset, gain, swap) in enumerate(zip(*draw[1:])):
            assert 0 <= offset <= small_cache.frames(track) - NUM_FRAME
            window = _window(small_cache, track, k, offset) * gain
            stems.append(window[[1, 0, 3, 2]] if swap else window)
            swapped |= swap
        np.testing.assert_allclose(mixture.numpy(), sum(stems), rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(target.numpy(), stems[draw.condition])
        assert condition.item() == draw.condition
        assert all(0.25 <= g < 1.25 for g in draw.gains) and (set(draw.gains) != {1.0}) == augment
    assert swapped == augment


def test_mix_across_tracks_off_takes_one_track_and_offset(small_cache):
    dataset = TrainDataset(small_cache, NUM_FRAME, mix_across_tracks=False)
    torch.manual_seed(1)
    draws = [dataset.draw() for _ in range(30)]
    assert all(len(set(d.tracks)) == 1 and len(set(d.offsets)) == 1 for d in draws)
    assert len({d.tracks[0] for d in draws}) == 3
    crossed = TrainDataset(small_cache, NUM_FRAME)
    assert any(len(set(crossed.draw().tracks)) > 1 for _ in range(30))


def _epoch(dataset, seed: int, workers: int) -> list[torch.Tensor]:
    seed_everything(seed, workers=True, verbose=False)
    loader = train_batches(dataset, 4, num_workers=workers)
    return [torch.cat([mixture.flatten(1), condition[:, None].float()], 1) for mixture, _, condition in loader]


def test_randomness_is_seeded_and_differs_between_items_and_workers(small_cache):
    dataset = TrainDataset(small_cache, NUM_FRAME, items_per_epoch=16, augment_gain=True)
    for workers in (0, 2):
        first, again = _epoch(dataset, 7, workers), _epoch(dataset, 7, workers)
        assert all(torch.equal(a, b) for a, b in zip(first, again))
        items = torch.cat(first)
        assert len({tuple(row[:64].tolist()) for row in items}) == len(items)  # no two items alike
        assert not torch.equal(torch.cat(_epoch(dataset, 8, workers)), items)
    # With 2 workers, batches 0 and 1 come from different workers: they must not repeat each other.
    batches = _epoch(dataset, 7, 2)
    assert not torch.equal(batches[0], batches[1])


def _items(loader) -> torch.Tensor:
    return torch.cat(
        [torch.cat([mixture.flatten(1), condition[:, None].float()], 1) for mixture, _, condition in loader]
    )


@pytest.mark.parametrize("workers", [0, 2])
def test_rank_sampling_same_gives_every_rank_the_draws_of_rank_zero(small_cache, workers):
    """``train.rank_sampling`` on two DDP ranks, in one process: each rank seeded as the train stage
    seeds it, its loader then given the worker seeding that Lightning's Trainer adds to every loader
    (``_auto_add_worker_init_fn`` with the rank), which mixes the rank in unless a seeding is set."""
    from lightning_fabric.utilities.data import _auto_add_worker_init_fn

    dataset = TrainDataset(small_cache, NUM_FRAME, items_per_epoch=16, augment_gain=True)

    def epoch(rank: int, rank_sampling: str | None) -> torch.Tensor:
        if rank_sampling is None:  # the seed of 'same' without its worker seeding
            seed_everything(7, workers=True, verbose=False)
            loader = train_batches(dataset, 4, num_workers=workers)
        else:
            loader = train_batches(dataset, 4, num_workers=workers, worker_init_fn=seed_draws(7, rank, rank_sampling))
        _auto_add_worker_init_fn(loader, rank)
        return _items(loader)

    same = [epoch(rank, "same") for rank in (0, 1)]
    distinct = [epoch(rank, "distinct") for rank in (0, 1)]
    assert torch.equal(same[0], same[1]) and len(same[0]) == 16
    assert torch.equal(distinct[0], same[0])  # rank zero draws alike either way (and one GPU is rank zero)
    assert not torch.equal(distinct[1], distinct[0])
    if workers:  # Lightning's own worker seeding would tell the ranks apart: 'same' has to set its own
        assert not torch.equal(epoch(1, None), same[0])


class _ItemByItem(torch.utils.data.Dataset):
    """A dataset seen through ``__getitem__`` only: the DataLoader stacks single items."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return self.dataset[index]


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_are_the_items_of_the_same_draws(small_cache, workers):
    """Whole-batch assembly changes nothing that is sampled: same random stream, same bits."""
    dataset = TrainDataset(small_cache, NUM_FRAME, items_per_epoch=24, augment_gain=True, augment_channel_swap=True)
    seed_everything(3, workers=True, verbose=False)
    batched = list(train_batches(dataset, 4, num_workers=workers))
    seed_everything(3, workers=True, verbose=False)
    single = list(DataLoader(_ItemByItem(dataset), batch_size=4, num_workers=workers, drop_last=True))
    assert len(batched) == len(single) == 6
    for got, want in zip(batched, single):
        assert [x.shape for x in got] == [x.shape for x in want] == [(4, 4, NUM_FRAME, 129)] * 2 + [(4,)]
        assert all(torch.equal(a, b) for a, b in zip(got, want))
        assert got[0].is_shared() == (workers > 0)  # built in shared memory: sending it copies nothing


def test_collate_passes_batches_on_and_stacks_anything_else(small_cache):
    dataset = TrainDataset(small_cache, NUM_FRAME, items_per_epoch=8)
    torch.manual_seed(0)
    items = dataset.__getitems__(list(range(3)))
    mixture, target, condition = collate(items)
    assert mixture.data_ptr() == items[0][0].data_ptr() and mixture.shape == (3, 4, NUM_FRAME, 129)
    assert torch.equal(target[2], items[2][1]) and condition.tolist() == [int(c) for _, _, c in items]
    again = collate([items[0], items[2]])  # not consecutive rows: stacked, as default_collate does
    assert again[0].data_ptr() != mixture.data_ptr() and torch.equal(again[0][1], mixture[2])
    fresh = collate([dataset[0], dataset[1]])
    assert fresh[0].shape == (2, 4, NUM_FRAME, 129)


def test_tracks_shorter_than_a_window(small_cache):
    long = 2000  # frames, more than any synthetic track
    with pytest.raises(
        DataError, match=r"shorter than num_frame = 2000 frames \(127936 samples\); set train.items_per_epoch"
    ):
        TrainDataset(small_cache, long)
    dataset = TrainDataset(small_cache, long, items_per_epoch=4)
    draw = Draw(0, ["synthetic train 000"] * 4, [0] * 4, [1.0] * 4, [False] * 4)
    mixture, target, _ = dataset.assemble(draw)
    frames = small_cache.frames("synthetic train 000")
    assert mixture.shape == (4, long, 129) and not mixture[:, frames:].any()
    expected = _window(small_cache, draw.tracks[0], 0, 0, frames)
    np.testing.assert_array_equal(target[:, :frames].numpy(), expected)


def test_validation_windows_are_the_official_eval_set(small_cache):
    """MusdbEvalSetWithGT: cores of window - 2 * trim samples tile the track (the last one
    zero-padded), each with trim zeros on both sides."""
    trim = edge_trim(64, NUM_FRAME)
    assert trim == 3 * 64  # a quarter window: the official 79 hops would not fit in 15
    assert edge_trim(1024, 128) == 5 * 1024  # the seed config: official ceil(5000 / hop) * hop
    core = WINDOW - 2 * trim  # 576
    dataset = ValidDataset(small_cache, NUM_FRAME, trim=edge_trim(64, NUM_FRAME))
    track = small_cache.tracks("valid")[0]
    count = -(-TRACK // core)  # 77: rounded up
    assert (dataset.trim, dataset.core, count) == (192, 576, 77)
    assert dataset.chunks == [(track, i * core) for i in range(count)] and len(dataset) == 4 * count
    audio = small_cache.load_audio(track)
    for index in (0, 5, 4 * count - 1):
        mixture, target, condition = dataset[index]
        start = index // 4 * core
        assert condition.item() == index % 4 and mixture.shape == target.shape == (WINDOW, 2)
        kept = min(core, TRACK - start)  # 324 in the last core
        for wave, stem in ((mixture, "mixture"), (target, ("vocals", "drums", "bass", "other")[index % 4])):
            np.testing.assert_array_equal(wave[trim : trim + kept].numpy(), audio[stem][start : start + kept])
            assert not wave[:trim].any() and not wave[trim + kept :].any()
        assert mixture[trim : trim + kept].abs().sum() > 0  # the comparison can fail
    assert TRACK - (count - 1) * core == 324


def test_validation_chunks_per_track_and_padding(small_cache):
    core = WINDOW - 2 * 192
    spread = ValidDataset(small_cache, NUM_FRAME, chunks_per_track=3, trim=192)
    with pytest.raises(DataError, match="validation trim 480: must leave part of the 960-sample window"):
        ValidDataset(small_cache, NUM_FRAME, trim=480)
    assert [start for _, start in spread.chunks] == [0, 38 * core, 76 * core]
    whole = ValidDataset(
        small_cache, 1000, trim=edge_trim(64, 1000)
    )  # window 63936 samples, trim 79 hops, one core of 53824 > 44100
    assert (whole.window, whole.trim, whole.core, len(whole)) == (63936, 5056, 53824, 4)
    mixture, _, _ = whole[0]
    audio = small_cache.load_audio(small_cache.tracks("valid")[0])
    np.testing.assert_array_equal(mixture[5056 : 5056 + TRACK].numpy(), audio["mixture"])
    assert mixture.shape == (63936, 2) and not mixture[:5056].any() and not mixture[5056 + TRACK :].any()


def test_spectral_mixing_is_exact_on_a_real_track(real_cache):
    """Sum of the cached stem windows == the whole-track STFT of the time-domain stem sum, sliced."""
    stems, _ = read_stems(shared_path("musdb", "musdb18-7", "train", f"{ROCK}.stem.mp4"))
    reference = stft(stems["vocals"] + stems["drums"] + stems["bass"] + stems["other"], 4096, 1024)
    dataset = TrainDataset(real_cache, 128, mix_across_tracks=False)
    torch.manual_seed(3)
    for _ in range(3):
        draw = dataset.draw()
        mixture, _, _ = dataset.assemble(draw)
        offset, scale = draw.offsets[0], np.abs(reference).max()
        error = np.abs(mixture.numpy() - reference[:, offset : offset + 128]).max() / scale
        print(f"offset {offset}: max error {error:.2e} of max |X|")
        assert error < 2e-3  # float16 cache: relative precision 2**-11 per stem
        if offset > 0:  # and the comparison can tell a one-frame shift
            assert np.abs(mixture.numpy() - reference[:, offset - 1 : offset + 127]).max() / scale > 100 * error


def test_cached_windows_differ_from_the_official_per_window_stft_in_two_frames_a_side(real_cache):
    """The official code takes the STFT of each training window (reflect padding at its edges); we
    slice the cached whole-track STFT, whose edge frames see the neighbouring audio instead. With
    n_fft = 4 hops that changes frames 0, 1, 126 and 127 of 128 and nothing else (README, "Training")."""
    stems, _ = read_stems(shared_path("musdb", "musdb18-7", "train", f"{ROCK}.stem.mp4"))
    dataset = TrainDataset(real_cache, 128)
    window = 1024 * 127
    last = (len(stems["mixture"]) - window) // 1024  # the last offset whose window is all inside the track
    for condition, offset in ((0, 10), (1, last // 3), (2, 2 * last // 3), (3, last - 10)):  # not at the track's edges
        draw = Draw(condition, [ROCK] * 4, [offset] * 4, [1.0] * 4, [False] * 4)
        _, target, _ = dataset.assemble(draw)
        official = stft(stems[TARGETS[condition]][offset * 1024 : offset * 1024 + window], 4096, 1024)
        # each frame's difference against that frame's own energy
        error = np.linalg.norm(target.numpy() - official, axis=(0, 2)) / np.linalg.norm(official, axis=(0, 2))
        print(f"{TARGETS[condition]} at frame {offset}: frames 0, 1, 126, 127 off by {error[[0, 1, 126, 127]]}")
        assert error[2:126].max() < 2e-3  # the float16 cache's precision
        assert error[[0, 1, 126, 127]].min() > 0.1
