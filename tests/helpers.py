"""What several test modules share: the fixture policy, the tiny config, small data sets, fakes.

Test modules import from here (``import helpers`` works from tests/ and its subfolders: see
``pythonpath`` in pyproject.toml), never from each other or from conftest.py, which holds the
fixtures only. A missing fixture (../shared data, ffmpeg, Chromium) skips a test when run by
hand, but `make test` sets LIGHTSAFT_REQUIRE_FIXTURES=1 and then it fails: CI never passes by
skipping.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib
import io
import logging
import os
import re
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.path.abspath(os.environ.get("LIGHTSAFT_SHARED", REPO.parent / "shared")))  # links kept

# The golden "tiny" configuration of ../shared/reference (test_model checks our model built from
# it reproduces the golden tensors).
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


# ---------------------------------------------------------------------------------------
# The fixture policy
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


# ---------------------------------------------------------------------------------------
# Params, projects, trainings
def tiny_params(**overrides) -> dict:
    """Validated params for the tiny model on a small synthetic set, CPU, short training.
    ``overrides`` are dotted keys, e.g. ``tiny_params(**{"trainer.max_epochs": 1})``."""
    from lightsaft.config import defaults, validate
    from lightsaft.schema import set_dotted

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


def repo_env() -> dict[str, str]:
    """The environment of commands run in a test repository: no tracking URI or DVC_ROOT of ours,
    this interpreter's tools first on PATH, a git identity for DVC's experiment commits."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    for who in ("AUTHOR", "COMMITTER"):
        env.setdefault(f"GIT_{who}_NAME", "LightSAFT tests")
        env.setdefault(f"GIT_{who}_EMAIL", "tests@example.org")
    return env


def snapshot_repo(dst: Path) -> Path:
    """A fresh repository holding the working tree as git sees it (tracked + untracked, not ignored)."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dst / name)
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "snapshot"]):
        subprocess.run(["git", *args], cwd=dst, check=True, env=repo_env())
    return dst


def make_project(root: Path, mlflow_db: bool = False) -> Path:
    """A directory that paths.project_root() takes for a DVC project (the MLflow database lands here).
    ``mlflow_db``: with an empty MLflow database already there, a copy of one made once per session
    (a new database runs MLflow's schema migrations, 3-15 s here; the copy takes 0.3 s): for every
    project where something records runs, unless a test checks that the database gets created."""
    (root / ".dvc").mkdir(parents=True, exist_ok=True)
    if mlflow_db and not (root / "mlflow.db").exists():
        shutil.copyfile(empty_mlflow_db(), root / "mlflow.db")
    return root


@functools.cache
def empty_mlflow_db() -> Path:
    """An MLflow SQLite database with its schema and nothing else, made once per process."""
    from mlflow.tracking import MlflowClient

    folder = Path(tempfile.mkdtemp(prefix="lightsaft-tests-mlflow-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    loggers = [logging.getLogger(name) for name in ("mlflow.store.db.utils", "alembic")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:  # quiet: the test that happens to make it may read its own stderr
        logger.setLevel(logging.WARNING)
    try:
        MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments(max_results=1)  # creates, migrates
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
    return folder / "mlflow.db"


START_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")  # as the session found it


def put_back_mlflow_tracking_uri() -> None:
    """MLflow's process-wide tracking URI, and the MLFLOW_TRACKING_URI it sets with it, as the session
    found them: a training in this process leaves both on its project's database (Lightning's MLflow
    logger sets them), where a later test's ``mlflow.search_runs`` would look."""
    utils = sys.modules.get("mlflow.tracking._tracking_service.utils")
    if utils is not None and utils._tracking_uri is not None:
        utils.set_tracking_uri(None)  # unsets MLFLOW_TRACKING_URI too
    if START_TRACKING_URI is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = START_TRACKING_URI


def train_into(root: Path, params: dict, cache_dir) -> dict:
    """Train as the stage does, writing the stage outputs below ``root``; returns train.json's metrics."""
    from lightsaft.train import TrainOutputs, train, write_outputs

    try:
        result = train(params, cache_dir)
        write_outputs(result, TrainOutputs.under(root))
    finally:
        put_back_mlflow_tracking_uri()
    return result.metrics


def training_project(root: Path, cache: Path, epochs: int, experiment: str, **overrides) -> dict:
    """A project whose train stage trains the tiny model on ``cache``, 8 steps per epoch."""
    make_project(root, mlflow_db=True)
    (root / "data").mkdir()
    os.symlink(cache, root / "data" / "cache")
    params = tiny_params(
        **{
            "train.items_per_epoch": 64,
            "train.valid_chunks_per_track": 1,
            "trainer.max_epochs": epochs,
            "mlflow.experiment": experiment,
            **overrides,
        }
    )
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return params


def mlflow_runs(root: Path, experiment: str) -> list:
    """The MLflow runs of ``experiment`` in the project at ``root``, newest first."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


# ---------------------------------------------------------------------------------------
# Data sets
ROCK = "Music Delta - 80s Rock"
FALCON = "The Easton Ellises - Falcon 69"
SYNTHETIC = {"train_tracks": 3, "valid_tracks": 1, "test_tracks": 1, "seconds": 1.0, "seed": 0}  # no silent stem


def dataset_json(folder: Path, **data) -> Path:
    """Run the download stage into ``folder/raw`` with ``data`` overrides."""
    from lightsaft.config import defaults
    from lightsaft.download import download

    params = defaults()["data"]
    params.update(data)
    return download(params, folder / "raw")


def stft(wave: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """The model's STFT of a ``[L, 2]`` waveform, ``[4, T, F]`` as the cache stores it."""
    from lightsaft.spectral import SpectralFrontEnd

    with torch.no_grad():
        wave = torch.from_numpy(np.ascontiguousarray(wave))[None]
        return SpectralFrontEnd(n_fft, hop).stft(wave)[0].numpy()


def noise(length: int, seed: int = 0) -> np.ndarray:
    """A stereo float32 noise signal ``[length, 2]``."""
    return (np.random.default_rng(seed).standard_normal((length, 2)) * 0.3).astype(np.float32)


class MemoryCache:
    """``lightsaft.data.cache.Cache``'s reading interface over in-memory tracks (test split only).

    ``fail``: reading that track raises OSError; ``crash``: reading it kills the (worker) process,
    as an out-of-memory kill would. Picklable, for the evaluate stage's worker processes."""

    def __init__(self, audio: dict[str, dict[str, np.ndarray]], fail: str | None = None, crash: str | None = None):
        self.audio, self.fail, self.crash = audio, fail, crash

    def tracks(self, split: str) -> list[str]:
        return list(self.audio) if split == "test" else []

    def samples(self, track: str) -> int:
        return len(self.audio[track]["mixture"])

    def load_audio(self, track: str, start: int = 0, stop: int | None = None, stems=None) -> dict[str, np.ndarray]:
        if track == self.fail:
            raise OSError(f"{track}: cannot read")
        if track == self.crash:
            os._exit(3)
        return {stem: self.audio[track][stem][start:stop] for stem in stems or self.audio[track]}


TWO = ("vocals", "drums")  # two targets keep museval's cost (cubic in the source count) low


def make_tracks(names, seconds=2.0, seed=0, targets=TWO) -> dict[str, dict[str, np.ndarray]]:
    """Noise stems of ``targets`` and their sum as the mixture, per track name."""
    rng = np.random.default_rng(seed)
    tracks = {}
    for name in names:
        stems = {t: (rng.standard_normal((int(44100 * seconds), 2)) * 0.1).astype(np.float32) for t in targets}
        stems["mixture"] = sum(stems.values())
        tracks[name] = stems
    return tracks


def write_estimates(root: Path, tracks, make, targets=TWO) -> None:
    """``root/test/<track>/<target>.wav`` = ``make(stems, target)``, the separate stage's layout."""
    from lightsaft.data.audio import write_audio

    for name, stems in tracks.items():
        for target in targets:
            write_audio(root / "test" / name / f"{target}.wav", make(stems, target), 44100)


# ---------------------------------------------------------------------------------------
# A stand-in model
class SpecModel(torch.nn.Module):
    """Stand-in with the Separator's interface; ``forward`` is a plain function of the input."""

    def __init__(self, fn):
        from lightsaft.spectral import SpectralFrontEnd

        super().__init__()
        self.params = dict(TINY_MODEL)
        self.front = SpectralFrontEnd(TINY_MODEL["n_fft"], TINY_MODEL["hop_length"])
        self.fn = fn

    def forward(self, spec: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return self.fn(spec, condition)


def identity(spec, condition):
    return spec


# ---------------------------------------------------------------------------------------
# Downloads: archives shaped like MUSDB18-7-STEMS.zip, served by the `server` fixture
def zip_bytes(entries: dict[str, bytes], extra: list[zipfile.ZipInfo] = ()) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for info in extra:
            zf.writestr(info, b"payload")
    return buffer.getvalue()


def musdb_zip(train: dict[str, bytes], test: dict[str, bytes]) -> bytes:
    """A zip shaped like MUSDB18-7-STEMS.zip: train/*.stem.mp4, test/*.stem.mp4."""
    return zip_bytes(
        {
            f"{split}/{name}.stem.mp4": data
            for split, files in (("train", train), ("test", test))
            for name, data in files.items()
        }
    )


def data_params(**data) -> dict:
    """The default ``data`` params with ``data`` overrides."""
    from lightsaft.config import defaults

    params = defaults()["data"]
    params.update(data)
    return params


def sample_params(server, body: bytes, **data) -> dict:
    """``data`` params downloading ``body`` from ``server`` as the musdb18-sample zip."""
    server.files["/MUSDB18-7-STEMS.zip"] = body
    return data_params(
        **{
            "source": "musdb18-sample",
            "sample_url": f"{server.url}/MUSDB18-7-STEMS.zip",
            "allow_insecure_http": True,
            "valid_tracks": ["B"],
            **data,
        }
    )


DUMMY = musdb_zip({"A": b"a" * 5000, "B": b"b" * 5000}, {"C": b"c" * 5000})


class RangeHandler(BaseHTTPRequestHandler):
    """A loopback file server with Range support; the server carries ``files`` (path -> bytes),
    ``requests`` (what was asked), ``ranges`` (honour Range) and ``drop_after`` (hang up once
    after that many bytes, having announced the whole file)."""

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
        if server.drop_after is not None:
            payload, server.drop_after = payload[: server.drop_after], None
            self.close_connection = True
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


# ---------------------------------------------------------------------------------------
# Stopped stages: a stage script in its own process, paused at a chosen function
#
# Runs a stage script with ``module:owner.function`` wrapped: after its first call returns, the
# marker file is written; then every call sleeps ``delay`` seconds (600: the stage waits to be
# killed; a fraction of a second: it keeps working, slowly, and stops as it would on a signal).
PAUSED_STAGE = """
import functools, importlib, pathlib, runpy, sys, time
target, marker, script, delay = sys.argv[1:5]
module, _, path = target.partition(":")
owner = importlib.import_module(module)
*parents, name = path.split(".")
for parent in parents:
    owner = getattr(owner, parent)
original, calls = getattr(owner, name), []
@functools.wraps(original)
def paused(*args, **kwargs):
    result = original(*args, **kwargs)
    if not calls:
        pathlib.Path(marker).write_text("working")
    calls.append(1)
    time.sleep(float(delay))
    return result
setattr(owner, name, paused)
sys.argv = [script]
runpy.run_path(script, run_name="__main__")
"""
KILLS = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -signal.SIGKILL}
STAGE_ENV = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT")}
# Pausing here, a training has finished its first epoch and written its checkpoints.
EPOCH_CHECKPOINT = "pytorch_lightning.callbacks:ModelCheckpoint.on_train_epoch_end"


def run_stage(root: Path, stage: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``pipeline/<stage>.py`` in ``root``, as DVC runs it (its own process); fails the test on error."""
    done = subprocess.run(
        [sys.executable, str(REPO / "pipeline" / f"{stage}.py")],
        cwd=root, env=STAGE_ENV, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done


def run_stage_in_process(root: Path, stage: str, *args: str, code: int = 0) -> None:
    """``pipeline/<stage>.py args`` in this process (cheap: no interpreter start-up), in ``root`` as
    DVC runs it; fails the test unless the stage exits with ``code`` (its one-line errors go to
    stderr: read them with capsys). What the stage changed in this process is put back afterwards:
    its SIGTERM handler, the SIGINT that Lightning ignores once it has handled a Ctrl+C, MLflow's
    process-wide tracking URI."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setattr(sys, "argv", [f"pipeline/{stage}.py", *args])
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("DVC_ROOT", str(root))
        try:
            runpy.run_path(str(REPO / "pipeline" / f"{stage}.py"), run_name="__main__")
            exited = 0
        except SystemExit as e:
            exited = e.code or 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            put_back_mlflow_tracking_uri()
    assert exited == code, f"pipeline/{stage}.py exited with {exited}, not {code}"


def start_paused(
    root: Path, stage: str, pause_at: str, delay: float = 600, new_session: bool = False
) -> subprocess.Popen:
    """Start ``pipeline/<stage>.py`` in ``root`` and wait until ``pause_at`` has done its work
    once; the stage then waits to be killed (or, with a short ``delay``, goes on slowly). Its
    output goes to ``root/<stage>.log``. ``new_session``: its own process group, as a terminal
    gives a foreground job (``os.killpg`` is then Ctrl+C)."""
    marker, log = root / f".{stage}.working", root / f"{stage}.log"
    marker.unlink(missing_ok=True)
    script = str(REPO / "pipeline" / f"{stage}.py")
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", PAUSED_STAGE, pause_at, str(marker), script, str(delay)],
            cwd=root,
            env=STAGE_ENV,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=new_session,
        )
    deadline = time.monotonic() + 180
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.1)
    marker.unlink()
    return proc


def kill_while_working(root: Path, stage: str, pause_at: str, sig: signal.Signals, delay: float = 600) -> str:
    """Kill the stage with ``sig`` once ``pause_at`` has done its work; check how it ended
    (exit code, a one-line message, no process left behind). Returns the stage's output."""
    proc = start_paused(root, stage, pause_at, delay)
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(sig)
    code = proc.wait(timeout=120)
    output = (root / f"{stage}.log").read_text()
    (root / f"{stage}.log").unlink()
    assert code == KILLS[sig], output[-3000:]
    if sig != signal.SIGKILL:
        assert f"{stage}: {'interrupted' if sig == signal.SIGINT else 'terminated'}" in output
        assert "Traceback" not in output, output[-3000:]
    # No process of the stage lives on (museval workers, DataLoader workers, ffmpeg).
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, [p.cmdline() for p in alive]
    return output


# ---------------------------------------------------------------------------------------
# `lightsaft ui` (test_mlflow, and the one the demo suggests in test_pipeline)
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def lightsaft_ui(cmd: list[str], cwd: Path, env: dict[str, str], log: Path, port: int):
    """``cmd`` (``lightsaft ui --port <port>`` in some form) running in ``cwd``, MLflow telemetry off,
    until the block ends; yields its base URL and the lines it printed before serving. Stops the
    whole process group: terminating lightsaft ui alone left mlflow ui and its job runners running."""
    import urllib.request
    from types import SimpleNamespace

    env = {**env, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    with open(log, "w") as out:
        server = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=5)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"{' '.join(cmd)} did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield SimpleNamespace(base=base, printed=log.read_text().splitlines())
    finally:
        try:
            group = [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)]
        except psutil.NoSuchProcess:  # it exited: the failure above says why
            group = []
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        _, alive = psutil.wait_procs(group, timeout=10)
        for process in alive:  # MLflow's job runners do not always stop on SIGTERM
            process.kill()
        server.wait()


def api(base: str, path: str, body: dict | None = None) -> dict:
    """A call of the MLflow REST API that a served UI answers (GET, or POST with ``body``)."""
    import json
    import urllib.request

    request = urllib.request.Request(
        f"{base}/api/2.0/mlflow/{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def ui_links(printed: list[str]) -> dict[str, str]:
    """Experiment name -> the training-runs link `lightsaft ui` printed for it."""
    found = (re.match(r"\s*training runs of '(.+)': (\S+)$", line) for line in printed)
    return {m.group(1): m.group(2) for m in found if m}


# ---------------------------------------------------------------------------------------
# Stopped stages in this process: the stage script run by run_stage_in_process, the signal sent
# to this process from inside it once ``module:owner.function`` has done its work (its handlers
# are the stage's own, as in a process of its own: a Ctrl+C lands between two bytecodes). A real
# process per signal kind is left to the tests that need the process itself (exit status, what
# the OS delivers, child processes): see tests/reliability/test_interrupted_training.py.
EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}
SAID = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}


def _owner(target: str) -> tuple[object, str]:
    """``module:owner.function`` -> (the object holding the function, its name)."""
    module, _, path = target.partition(":")
    owner = importlib.import_module(module)
    *parents, name = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    return owner, name


def after_call(monkeypatch, target: str, action, calls: int = 1) -> None:
    """Run ``action()`` once ``target`` (``module:owner.function``) has returned ``calls`` times."""
    owner, name = _owner(target)
    original, count = getattr(owner, name), [0]

    @functools.wraps(original)
    def wrapped(*args, **kwargs):
        result = original(*args, **kwargs)
        count[0] += 1
        if count[0] == calls:
            action()
        return result

    monkeypatch.setattr(owner, name, wrapped)


def raise_signal(sig: signal.Signals) -> None:
    """``sig`` to this process; SIGTERM only while something handles it (unhandled, it ends pytest)."""
    if sig == signal.SIGTERM and signal.getsignal(sig) in (signal.SIG_DFL, signal.SIG_IGN, None):
        raise AssertionError("nothing handles SIGTERM here: it would end the test session")
    signal.raise_signal(sig)


def signal_in_process(
    root: Path, stage: str, pause_at: str, sig: signal.Signals, monkeypatch, capsys, calls: int = 1
) -> str:
    """``pipeline/<stage>.py`` in this process, sent ``sig`` (SIGINT or SIGTERM) once ``pause_at`` has
    returned ``calls`` times; checks the exit code and the one-line message (no traceback); returns
    stderr."""
    capsys.readouterr()
    with monkeypatch.context() as mp:
        after_call(mp, pause_at, lambda: raise_signal(sig), calls)
        run_stage_in_process(root, stage, code=EXIT[sig])
    err = capsys.readouterr().err
    assert f"{stage}: {SAID[sig]}" in err and "Traceback" not in err, err[-3000:]
    return err


class Killed(BaseException):
    """Stops a stage in this process where SIGKILL stands in (see :func:`killed_in_process`)."""


def _on_disk(root: Path, skip: tuple[str, ...]) -> tuple[set[str], set[str]]:
    """The files and folders below ``root`` (relative), not following links, not under ``skip``."""
    files, folders = set(), set()
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if rel.parts[0] in skip or rel.parts[0].startswith("mlflow.db"):
            continue
        (folders if path.is_dir() and not path.is_symlink() else files).add(str(rel))
    return files, folders


def killed_in_process(root: Path, stage: str, pause_at: str, monkeypatch, side: Path) -> None:
    """SIGKILL, which no process survives, by its effect: ``pipeline/<stage>.py`` runs in this process
    until ``pause_at`` has done its work once; the project's files as they are at that instant are what
    SIGKILL would leave. They are copied to ``side``, the stage is stopped (:class:`Killed`: its clean-up
    runs), and the copy is put back over what the clean-up changed. Not restored: the MLflow database
    and artifacts (the stages record when their work is done, never in the middle)."""
    skip = (".dvc", "mlartifacts")

    taken = []

    def snapshot():
        taken.extend(_on_disk(root, skip))
        for rel in taken[0]:
            (side / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / rel, side / rel, follow_symlinks=False)
        raise Killed()

    with monkeypatch.context() as mp:
        after_call(mp, pause_at, snapshot)
        with pytest.raises(Killed):
            run_stage_in_process(root, stage)
    files, folders = taken
    now_files, now_folders = _on_disk(root, skip)
    for rel in now_files - files:
        (root / rel).unlink()
    for rel in sorted(now_folders - folders, reverse=True):
        shutil.rmtree(root / rel, ignore_errors=True)
    for rel in sorted(folders):
        (root / rel).mkdir(exist_ok=True)
    for rel in files:
        (root / rel).unlink(missing_ok=True)
        shutil.copy2(side / rel, root / rel, follow_symlinks=False)
