"""Shared fixtures: the tiny model config, trained models, data sets and caches built once per
session, a loopback HTTP server. Plain helpers (and the fixture policy) live in helpers.py.

What a new test reuses (the suite's budget: `make test` <= 10-15 minutes on 2 cores, `make
test-fast` <= 3 and no Python process there that imports torch):
- data: ``small_dataset`` / ``small_cache`` (3 + 1 + 1 one-second tracks, n_fft 256: for data,
  cache and stage arithmetic), ``synthetic_cache`` (4 + 1 + 2 six-second tracks: what ``trained``
  learns from), ``real_cache`` (two MUSDB18 tracks); a test that changes files copies them first.
- a model: ``trained`` (the tiny model trained once, its stage outputs and MLflow run), or the
  ``weights`` of an untrained one; never a training of its own unless training is the behaviour
  (then helpers.training_project: 8 steps an epoch).
- projects: helpers.make_project (an MLflow database copied from a template: a new one costs
  3-15 s of migrations), helpers.run_stage_in_process for a stage script (a process of its own,
  helpers.run_stage, costs 5-10 s of imports: only where the process is the behaviour).
- signals: helpers.signal_in_process / killed_in_process in this process; a real process per
  signal kind exists already (tests/reliability/test_interrupted_training.py).
- the pipeline repository: tests/test_pipeline.py, one per session; new steps go at its end.
A test that needs a real process (a stage, DVC, DDP, SLURM, a signal, a browser or server) is
marked ``@pytest.mark.slow``; `make test` shows the 20 slowest tests (--durations).
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers import (
    FALCON,
    ROCK,
    SYNTHETIC,
    TINY_MODEL,
    RangeHandler,
    dataset_json,
    make_project,
    put_back_mlflow_tracking_uri,
    require_ffmpeg,
    shared_path,
    tiny_params,
    train_into,
)

pytest_plugins = ["slurm_cluster"]  # a one-node SLURM cluster and an MLflow server (tests/slurm_cluster.py)

# A shell's background job (`make test &`, nohup, some CI runners) starts with SIGINT ignored, and
# an ignored signal is inherited by every process the tests start: their stages would then not
# see the Ctrl+C the interrupt tests send. Handle it, so the children start as from a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# The fast lane (`make test-fast`: LIGHTSAFT_LANE=fast, the tests not marked slow) starts no Python
# process that imports torch: tests/lane/sitecustomize.py, first on every child's PYTHONPATH, refuses
# the import and logs the command; the autouse fixture below fails the test that started it.
FAST_LANE = os.environ.get("LIGHTSAFT_LANE") == "fast"


def pytest_configure(config):
    if FAST_LANE:
        log = Path(tempfile.mkstemp(prefix="lightsaft-torch-imports-", suffix=".log")[1])
        os.environ.update(
            LIGHTSAFT_FAST_LANE="1",
            LIGHTSAFT_TORCH_LOG=str(log),
            PYTHONPATH=os.pathsep.join(
                filter(None, [str(Path(__file__).parent / "lane"), os.environ.get("PYTHONPATH")])
            ),
        )


@pytest.fixture(autouse=True)
def no_torch_in_child_processes():
    yield
    log = os.environ.get("LIGHTSAFT_TORCH_LOG")
    if FAST_LANE and log and Path(log).stat().st_size:
        commands = Path(log).read_text()
        Path(log).write_text("")
        pytest.fail(
            f"the fast lane starts no Python process that imports torch, but this test did: {commands}"
            "mark the test @pytest.mark.slow, or test the behaviour in this process"
        )


@pytest.fixture(autouse=True)
def mlflow_tracking_uri_put_back():
    """After each test, MLflow's process-wide tracking URI as the session found it (see
    helpers.put_back_mlflow_tracking_uri; tests and fixtures that train in this process leave it
    on their own database)."""
    yield
    put_back_mlflow_tracking_uri()


@pytest.fixture
def tiny_model_params() -> dict:
    return dict(TINY_MODEL)


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


@pytest.fixture(scope="session")
def trained(tmp_path_factory, synthetic_cache):
    """The tiny model trained once per session (300 steps); later tests reuse its outputs."""
    from types import SimpleNamespace

    from lightsaft.train import TrainOutputs

    root = make_project(tmp_path_factory.mktemp("trained"), mlflow_db=True)
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


@pytest.fixture(scope="session")
def trained_by_sdr(tmp_path_factory, synthetic_cache):
    """The tiny model trained once more, keeping the best checkpoint by ``val_sdr`` (scored every
    2nd epoch) and a moving average of the weights (4 epochs of 4 steps): test_select_by checks
    the choice, test_finetune fine-tunes from it."""
    from types import SimpleNamespace

    from lightsaft.train import TrainOutputs

    root = make_project(tmp_path_factory.mktemp("by_sdr"))
    params = tiny_params(
        **{
            "train.select_by": "val_sdr",
            "train.val_sdr_every": 2,
            "train.ema_decay": 0.9,
            "train.save_top_k": 1,
            "train.items_per_epoch": 32,
            "train.valid_chunks_per_track": 4,
            "trainer.max_epochs": 4,
            "mlflow.experiment": "by-sdr",
        }
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DVC_ROOT", str(root))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        metrics = train_into(root, params, synthetic_cache)
    return SimpleNamespace(root=root, params=params, outputs=TrainOutputs.under(root), metrics=metrics)


# ---------------------------------------------------------------------------------------
# Data sets and caches shared by test_cache, test_datasets and others (built once per session)
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

    from lightsaft.model.unet import build_model
    from lightsaft.weights.ours import save_weights

    torch.manual_seed(0)
    path = tmp_path / "weights.pt"
    save_weights(path, build_model(TINY_MODEL), TINY_MODEL)
    return path


@pytest.fixture
def server():
    """A loopback HTTP server with Range support (helpers.RangeHandler), for download tests."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    httpd.files, httpd.requests, httpd.drop_after, httpd.ranges = {}, [], None, True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()
