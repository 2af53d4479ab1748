"""The training and validation losses against values computed by hand on small tensors."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_params

from lightsaft.errors import ConfigError
from lightsaft.spectral import SpectralFrontEnd
from lightsaft.training.losses import LOSSES, Target, raw_l1, spec_l1, spec_mse

FRONT = SpectralFrontEnd(256, 64)
# An estimate of zeros against a reference whose 8 values are 1, -1, 2, 0, 0, 0, 3, -3:
# squared errors sum to 24, absolute errors to 10.
REFERENCE = torch.tensor([1.0, -1.0, 2.0, 0.0, 0.0, 0.0, 3.0, -3.0]).reshape(1, 4, 1, 2)


def waves(length: int = 1000, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, length, 2, generator=torch.Generator().manual_seed(seed)) * 0.3


def test_spectrogram_losses_by_hand():
    target = Target(FRONT, spec=REFERENCE)
    assert spec_mse(torch.zeros(1, 4, 1, 2), target).item() == pytest.approx(24 / 8)
    assert spec_l1(torch.zeros(1, 4, 1, 2), target).item() == pytest.approx(10 / 8)
    assert spec_mse(REFERENCE + 0.5, target).item() == pytest.approx(0.25)
    assert spec_l1(REFERENCE - 0.5, target).item() == pytest.approx(0.5)


def test_half_precision_estimates_are_compared_in_fp32():
    """Under bf16 autocast the model's output is bf16; the loss must not lose the small errors."""
    target = Target(FRONT, spec=torch.full((1, 4, 2, 3), 1000.0))
    estimate = torch.full((1, 4, 2, 3), 1000.0).to(torch.bfloat16)
    assert spec_mse(estimate, target).dtype == torch.float32
    assert spec_l1(estimate, Target(FRONT, spec=torch.full((1, 4, 2, 3), 1001.0))).item() == pytest.approx(1.0)


def test_a_waveform_reference_becomes_its_spectrogram():
    wave = waves()
    spec = FRONT.stft(wave)
    assert spec_mse(spec, Target(FRONT, wave=wave)).item() == 0
    shifted = spec + 0.1
    assert spec_mse(shifted, Target(FRONT, wave=wave)).item() == pytest.approx(0.01)
    assert spec_l1(shifted, Target(FRONT, wave=wave)).item() == pytest.approx(0.1)


@pytest.mark.parametrize("length", [1000, 64 * 15])  # not and exactly a whole number of hops
def test_raw_l1_is_the_l1_of_the_waveforms_through_the_inverse_stft(length):
    mixture, other = waves(length, 1), waves(length, 2)
    estimate = FRONT.stft(mixture)  # its inverse STFT gives back ``mixture``
    expected = (mixture - other).abs().mean().item()
    assert raw_l1(estimate, Target(FRONT, wave=other)).item() == pytest.approx(expected, rel=1e-5)
    assert raw_l1(estimate, Target(FRONT, wave=mixture + 0.25)).item() == pytest.approx(0.25, rel=1e-4)
    # a spectrogram reference goes through the same inverse STFT, which gives whole hops only
    whole = 64 * (length // 64)
    expected = (mixture - other)[:, :whole].abs().mean().item()
    assert raw_l1(estimate, Target(FRONT, spec=FRONT.stft(other))).item() == pytest.approx(expected, rel=1e-5)


def test_every_loss_is_a_config_choice():
    for name in LOSSES:
        assert tiny_params(**{"train.train_loss": name, "train.val_loss": name})["train"]["val_loss"] == name
    with pytest.raises(ConfigError, match=r"train\.val_loss = 'l2': must be one of") as error:
        tiny_params(**{"train.val_loss": "l2"})
    assert all(repr(name) in str(error.value) for name in LOSSES)
