"""Training items mixed in the STFT domain, validation windows, seeded randomness across workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import ROCK, shared_path, stft
from pytorch_lightning import seed_everything
from torch.utils.data import DataLoader

from lightsaft.data.audio import read_stems
from lightsaft.data.datasets import Draw, TrainDataset, ValidDataset
from lightsaft.errors import DataError

NUM_FRAME = 16


def _window(cache, track: str, k: int, offset: int, num_frame: int = NUM_FRAME) -> np.ndarray:
    return np.asarray(cache.spec(track)[k, :, offset : offset + num_frame], dtype=np.float32)


def test_epoch_length_and_item_layout(small_cache):
    dataset = TrainDataset(small_cache, NUM_FRAME)
    frames = [small_cache.frames(n) for n in small_cache.tracks("train")]
    assert len(dataset) == 4 * sum(f // NUM_FRAME for f in frames) == 4 * 3 * (690 // 16)
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
    loader = DataLoader(dataset, batch_size=4, num_workers=workers)
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


def test_tracks_shorter_than_a_window(small_cache):
    long = 2000  # frames, more than any synthetic track
    with pytest.raises(DataError, match="shorter than num_frame = 2000 frames; set train.items_per_epoch"):
        TrainDataset(small_cache, long)
    dataset = TrainDataset(small_cache, long, items_per_epoch=4)
    draw = Draw(0, ["synthetic train 000"] * 4, [0] * 4, [1.0] * 4, [False] * 4)
    mixture, target, _ = dataset.assemble(draw)
    frames = small_cache.frames("synthetic train 000")
    assert mixture.shape == (4, long, 129) and not mixture[:, frames:].any()
    expected = _window(small_cache, draw.tracks[0], 0, 0, frames)
    np.testing.assert_array_equal(target[:, :frames].numpy(), expected)


def test_validation_windows_tile_each_track(small_cache):
    dataset = ValidDataset(small_cache, NUM_FRAME)
    window = 64 * (NUM_FRAME - 1)
    track = small_cache.tracks("valid")[0]
    chunks = 44100 // window
    assert len(dataset) == 4 * chunks
    audio = small_cache.load_audio(track)
    for index in (0, 5, 4 * chunks - 1):
        mixture, target, condition = dataset[index]
        start = index // 4 * window
        assert condition.item() == index % 4 and mixture.shape == target.shape == (window, 2)
        np.testing.assert_array_equal(mixture.numpy(), audio["mixture"][start : start + window])
        np.testing.assert_array_equal(
            target.numpy(), audio[("vocals", "drums", "bass", "other")[index % 4]][start : start + window]
        )


def test_validation_chunks_per_track_and_padding(small_cache):
    window = 64 * (NUM_FRAME - 1)
    spread = ValidDataset(small_cache, NUM_FRAME, chunks_per_track=3)
    assert [start for _, start in spread.chunks] == [
        0,
        (44100 // window - 1) // 2 * window,
        (44100 // window - 1) * window,
    ]
    whole = ValidDataset(small_cache, 1000)  # 63936 samples > the 44100 of the track
    assert len(whole) == 4
    mixture, _, _ = whole[0]
    audio = small_cache.load_audio(small_cache.tracks("valid")[0])
    np.testing.assert_array_equal(mixture[:44100].numpy(), audio["mixture"])
    assert mixture.shape == (64 * 999, 2) and not mixture[44100:].any()


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
