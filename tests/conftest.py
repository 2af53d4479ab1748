"""Shared fixtures: the tiny model config, the ../shared fixtures and the fixture policy.

A missing fixture (../shared data, ffmpeg, Chromium) skips a test when run by hand, but
`make test` sets LIGHTSAFT_REQUIRE_FIXTURES=1 and then it fails: CI never passes by skipping.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LIGHTSAFT_SHARED", REPO.parent / "shared"))

# The golden "tiny" configuration of ../shared/reference (test_model checks they agree).
TINY_MODEL = {
    "variant": "lightsaft",
    "n_fft": 256,
    "hop_length": 64,
    "num_frame": 16,
    "spec_type": "complex",
    "spec_est_mode": "mapping",
    "n_blocks": 5,
    "input_channels": 4,
    "internal_channels": 8,
    "first_conv_activation": "relu",
    "last_activation": "identity",
    "t_down_layers": None,
    "f_down_layers": None,
    "n_internal_layers": 2,
    "kernel_size_t": 3,
    "kernel_size_f": 3,
    "tfc_tdf_activation": "relu",
    "bn_factor": 4,
    "min_bn_units": 4,
    "tfc_tdf_bias": True,
    "num_tdfs": 4,
    "dk": 8,
    "embedding_dim": 8,
    "control_vector_type": "embedding",
    "control_input_dim": 4,
    "control_n_layer": 3,
    "control_type": "dense",
    "condition_to": "decoder",
    "pocm_type": "matmul",
    "pocm_norm": "batch_norm",
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
    require(
        shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None,
        "ffmpeg/ffprobe (apt-get install -y ffmpeg)",
    )


@pytest.fixture
def tiny_model_params() -> dict:
    return dict(TINY_MODEL)


def tiny_params(**overrides) -> dict:
    """Validated params for the tiny model on a small synthetic set, CPU, short training.
    ``overrides`` are dotted keys, e.g. ``tiny_params(**{"trainer.max_epochs": 1})``."""
    from lightsaft.config import defaults, validate
    from lightsaft.experiments import set_dotted

    params = defaults()
    params["model"] = dict(TINY_MODEL)
    base = {
        "data.source": "synthetic",
        "data.synthetic.train_tracks": 4,
        "data.synthetic.valid_tracks": 1,
        "data.synthetic.test_tracks": 2,
        "data.synthetic.seconds": 6.0,
        "train.init": "pytorch",
        "train.items_per_epoch": 800,
        "train.valid_chunks_per_track": 8,
        "trainer.accelerator": "cpu",
        "trainer.precision": "32",
        "trainer.max_epochs": 3,
        "runtime.train.num_workers": 0,
        "trainer.log_every_n_steps": 5,
        "mlflow.experiment": "tests",
    }
    for key, value in {**base, **overrides}.items():
        set_dotted(params, key, value)
    return validate(params)


def make_project(root: Path) -> Path:
    """A directory that paths.project_root() takes for a DVC project (paths.project_root) (MLflow DB lands here)."""
    (root / ".dvc").mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory):
    """The tiny synthetic set, downloaded (generated) and prepared once per test session."""
    from lightsaft.download import download
    from lightsaft.prepare import prepare

    root = make_project(tmp_path_factory.mktemp("synthetic"))
    params = tiny_params()
    download(params["data"], root / "data" / "raw")
    return prepare(
        root / "data" / "raw" / "dataset.json",
        root / "data" / "cache",
        params["model"]["n_fft"],
        params["model"]["hop_length"],
    )


def train_into(root: Path, params: dict, cache_dir) -> dict:
    """Train as the stage does, writing the stage outputs below ``root``; returns train.json's metrics."""
    from lightsaft.train import TrainOutputs, train, write_outputs

    result = train(params, cache_dir)
    write_outputs(result, TrainOutputs.under(root))
    return result.metrics


@pytest.fixture(scope="session")
def trained(tmp_path_factory, synthetic_cache):
    """The tiny model trained once per session (300 steps); later tests reuse its outputs."""
    from types import SimpleNamespace

    from lightsaft.train import TrainOutputs

    root = make_project(tmp_path_factory.mktemp("trained"))
    params = tiny_params()
    outputs = TrainOutputs.under(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DVC_ROOT", str(root))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        metrics = train_into(root, params, synthetic_cache)
    return SimpleNamespace(
        root=root,
        params=params,
        outputs=outputs,
        metrics=metrics,
        cache=synthetic_cache,
        tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
    )


# ---------------------------------------------------------------------------------------
# Data sets and caches shared by test_cache, test_datasets and others (built once per session)
ROCK = "Music Delta - 80s Rock"
FALCON = "The Easton Ellises - Falcon 69"
SYNTHETIC = {"train_tracks": 3, "valid_tracks": 1, "test_tracks": 1, "seconds": 1.0, "seed": 5}


def dataset_json(folder: Path, **data) -> Path:
    """Run the download stage into ``folder/raw`` with ``data`` overrides."""
    from lightsaft.config import defaults
    from lightsaft.download import download

    params = defaults()["data"]
    params.update(data)
    return download(params, folder / "raw")


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    return dataset_json(tmp_path_factory.mktemp("synthetic"), source="synthetic", synthetic=SYNTHETIC)


@pytest.fixture(scope="session")
def small_cache(small_dataset):
    from lightsaft.data.cache import Cache
    from lightsaft.prepare import prepare

    return Cache(prepare(small_dataset, small_dataset.parent.parent / "cache", 256, 64))


@pytest.fixture(scope="session")
def real_cache(tmp_path_factory):
    """80s Rock twice (train, and a copy as valid) and Falcon 69 (test), at the seed STFT."""
    from lightsaft.data.cache import Cache
    from lightsaft.prepare import prepare

    require_ffmpeg()
    folder = tmp_path_factory.mktemp("real")
    copies = (
        ("train", ROCK, "train", ROCK),
        ("train", f"{ROCK} (valid)", "train", ROCK),
        ("test", FALCON, "test", FALCON),
    )
    for split, name, original_split, original in copies:
        (folder / "tree" / split).mkdir(parents=True, exist_ok=True)
        source = shared_path("musdb", "musdb18-7", original_split, f"{original}.stem.mp4")
        shutil.copy(source, folder / "tree" / split / f"{name}.stem.mp4")
    dataset = dataset_json(folder, source="musdb18", root=str(folder / "tree"), valid_tracks=[f"{ROCK} (valid)"])
    return Cache(prepare(dataset, folder / "cache", 4096, 1024, "float16"), n_fft=4096, hop_length=1024)


@pytest.fixture
def weights(tmp_path):
    """A weights file of the (untrained) tiny model."""
    import torch

    from lightsaft.model import build_model, save_weights

    torch.manual_seed(0)
    path = tmp_path / "weights.pt"
    save_weights(path, build_model(TINY_MODEL), TINY_MODEL)
    return path


# ---------------------------------------------------------------------------------------
# A loopback HTTP server with Range support (download tests)
class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        body = server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start, status = 0, 200
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and server.ranges:
            start, status = int(match[1]), 206
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        payload = body[start:]
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        if server.drop_after is not None:  # announce the whole file, then hang up halfway
            payload, server.drop_after = payload[: server.drop_after], None
            self.close_connection = True
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.requests, httpd.drop_after, httpd.ranges = {}, [], None, True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()
