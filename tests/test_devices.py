"""Sharing the GPUs of one machine: trainings and separations of queued experiments each take a
GPU no other process holds (per-GPU lock files), an explicit device is used as given. The CUDA
lookup is mocked: these run on any machine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import MemoryCache, noise

from lightsaft import devices
from lightsaft.devices import DeviceError, claim_devices, inference_device
from lightsaft.paths import file_lock
from lightsaft.separation import estimates


@pytest.fixture
def gpus(monkeypatch, tmp_path):
    """A machine with ``n`` CUDA devices (``gpus(n)``), its GPU locks in ``tmp_path/locks``."""

    def machine(n: int, visible: str | None = None) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        if visible is None:
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        else:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)

    monkeypatch.setattr(devices, "lock_dir", lambda: tmp_path / "locks")
    return machine


def test_each_training_takes_a_free_gpu(tmp_path):
    """Queued trainings on a multi-GPU machine spread over the GPUs (locks; no GPU needed)."""
    with (
        claim_devices(1, ["0", "1", "2"], tmp_path) as first,
        file_lock(tmp_path / "gpu-1.lock"),  # held by some other training
        claim_devices(1, ["0", "1", "2"], tmp_path) as second,
    ):
        assert (first, second) == ([0], [2])
    with claim_devices(1, ["0", "1"], tmp_path) as again:  # released on exit
        assert again == [0]
    with claim_devices(4, ["0", "1"], tmp_path) as ddp, claim_devices(1, ["0"], tmp_path) as single:
        assert (ddp, single) == (4, 1)  # DDP / one GPU: as configured


def test_concurrent_separations_get_different_gpus(gpus, tmp_path):
    gpus(3)
    with inference_device("auto") as first, inference_device("auto") as second:
        assert (first, second) == (torch.device("cuda:0"), torch.device("cuda:1"))
        with file_lock(tmp_path / "locks" / "gpu-2.lock", wait=False):  # the third is free
            pass
    with inference_device("auto") as again:  # released on exit
        assert again == torch.device("cuda:0")


def test_a_gpu_held_by_another_process_is_skipped_by_name(gpus, tmp_path):
    """Locks are named after the GPU (as CUDA_VISIBLE_DEVICES names it), the device is its index."""
    gpus(2, visible="5,3")
    # some training holds physical GPU 5
    with file_lock(tmp_path / "locks" / "gpu-5.lock"), inference_device("auto") as device:
        assert device == torch.device("cuda:1")
        with pytest.raises(BlockingIOError), file_lock(tmp_path / "locks" / "gpu-3.lock", wait=False):
            pass  # GPU 3 is held while the stage runs
    with file_lock(tmp_path / "locks" / "gpu-3.lock", wait=False):
        pass  # and released after
    assert not list((tmp_path / "locks").glob("gpu-[0-2].lock"))


def test_an_explicit_device_is_used_as_given(gpus, tmp_path):
    gpus(2)
    # even a GPU another run holds: as asked
    with file_lock(tmp_path / "locks" / "gpu-1.lock"), inference_device("cuda:1") as device:
        assert device == torch.device("cuda:1")
    with inference_device("cpu") as device:
        assert device == torch.device("cpu")
    with (
        pytest.raises(DeviceError, match=r"this machine has 2 CUDA device\(s\), cuda:0 to cuda:1"),
        inference_device("cuda:2"),
    ):
        pass
    assert not list((tmp_path / "locks").glob("gpu-0.lock"))  # nothing claimed


def test_one_gpu_is_used_without_claiming(gpus, tmp_path):
    gpus(1)
    with inference_device("auto") as device:
        assert device == torch.device("cuda")
    gpus(0)
    with inference_device("auto") as device:
        assert device == torch.device("cpu")
    assert not (tmp_path / "locks").exists()


@pytest.mark.parametrize("device,expected", [("auto", "cuda:1"), ("cuda:0", "cuda:0")])
def test_the_separate_stage_runs_on_the_device_it_claims_or_is_given(
    gpus, tmp_path, monkeypatch, weights, device, expected
):
    """Not always cuda:0: with GPU 0 taken by another run, ``auto`` takes GPU 1 for every track."""
    gpus(2)
    used = []

    def fake_separate_stream(model, source, targets, device, **options):
        used.append(device)
        yield np.zeros((len(targets), source.frames, 2), dtype=np.float32)

    monkeypatch.setattr(estimates, "separate_stream", fake_separate_stream)
    cache = MemoryCache({"a": {"mixture": noise(100)}, "b": {"mixture": noise(100)}})
    with file_lock(tmp_path / "locks" / "gpu-0.lock"):
        estimates.separate_tracks(weights, cache, tmp_path / "estimates", device=device)
    assert used == [torch.device(expected)] * 2
