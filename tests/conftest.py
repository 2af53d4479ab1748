"""Shared fixtures: the tiny model config, the ../shared fixtures and the fixture policy.

A missing fixture (../shared data, ffmpeg, Chromium) skips a test when run by hand, but
`make test` sets LIGHTSAFT_REQUIRE_FIXTURES=1 and then it fails: CI never passes by skipping.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LIGHTSAFT_SHARED", REPO.parent / "shared"))

# The golden "tiny" configuration of ../shared/reference (test_model checks they agree).
TINY_MODEL = {
    "variant": "lightsaft",
    "n_fft": 256, "hop_length": 64, "num_frame": 16, "spec_type": "complex", "spec_est_mode": "mapping",
    "n_blocks": 5, "input_channels": 4, "internal_channels": 8, "first_conv_activation": "relu",
    "last_activation": "identity", "t_down_layers": None, "f_down_layers": None, "n_internal_layers": 2,
    "kernel_size_t": 3, "kernel_size_f": 3, "tfc_tdf_activation": "relu", "bn_factor": 4, "min_bn_units": 4,
    "tfc_tdf_bias": True, "num_tdfs": 4, "dk": 8, "embedding_dim": 8, "control_vector_type": "embedding",
    "control_input_dim": 4, "control_n_layer": 3, "control_type": "dense", "condition_to": "decoder",
    "pocm_type": "matmul", "pocm_norm": "batch_norm",
}


def require(condition: bool, what: str) -> None:
    """Skip (by hand) or fail (under make test) when a fixture is missing."""
    if condition:
        return
    message = f"missing test fixture: {what}"
    if os.environ.get("LIGHTSAFT_REQUIRE_FIXTURES") == "1":
        pytest.fail(message + " (LIGHTSAFT_REQUIRE_FIXTURES=1: run `make setup`, or put ../shared beside the repo)")
    pytest.skip(message)


def shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    require(path.exists(), str(path))
    return path


def require_ffmpeg() -> None:
    require(shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None,
            "ffmpeg/ffprobe (apt-get install -y ffmpeg)")


@pytest.fixture
def tiny_model_params() -> dict:
    return dict(TINY_MODEL)
