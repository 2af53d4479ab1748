"""Stopped stages: SIGINT, SIGTERM or SIGKILL in the middle of the work leaves nothing that DVC
or the next stage would take as complete, and the rerun gives the same output as a clean run.

Each stage runs its real ``pipeline/<stage>.py`` in this process (helpers.run_stage_in_process)
with one function of the package wrapped: once it has done its work, the stage is stopped, so the
stop lands while the stage is visibly working (a temporary folder half full), never by timing
luck. SIGINT and SIGTERM are sent to this process, where the stage's own handlers take them;
SIGKILL, which no process survives, by its effect: the files as they were at that instant
(helpers.killed_in_process). What needs the process itself (exit status from the OS, a real
signal delivered to a fresh interpreter, child processes outliving it) is tested once per signal
on the train stage (test_interrupted_training.py) and on the evaluate stage's workers here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml
from helpers import (
    REPO,
    SYNTHETIC,
    killed_in_process,
    make_project,
    run_stage_in_process,
    signal_in_process,
    tiny_params,
)
from mlflow.tracking import MlflowClient

from lightsaft.data.cache import Cache
from lightsaft.errors import DataError
from lightsaft.evaluation.engines import evaluate_tracks
from lightsaft.evaluation.scores import EvaluationError
from lightsaft.report.results import ReportError, build_report
from lightsaft.tracking import records, store


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def project_files(root: Path) -> set[str]:
    """Every file of the project outside the inputs (temporary leftovers would show here)."""
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file()
        and p.relative_to(root).parts[0] not in ("mlartifacts", ".dvc")
        and not p.name.startswith("mlflow.db")
    }


SMALL = {
    "data.synthetic": SYNTHETIC,  # the session's small set (conftest.small_dataset): data/raw
    "runtime.prepare.jobs": 1,
    "runtime.evaluate.jobs": 1,  # in the stage's process (test_killed_evaluate: two workers)
    "runtime.separate.batch_size": 64,
    "report.excerpt_seconds": 1.0,
    "mlflow.experiment": "killed",
}


def new_project(root: Path, raw: Path) -> Path:
    make_project(root, mlflow_db=True)
    (root / "data").mkdir()
    os.symlink(raw, root / "data" / "raw")
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(**SMALL)))
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory, small_dataset, trained):
    """A project with the session's trained model, run once through prepare, separate, evaluate
    and report: the reference outputs of a clean run."""
    root = new_project(tmp_path_factory.mktemp("killed"), small_dataset.parent)
    for source, target in (
        (trained.outputs.weights, "models/weights.pt"),
        (trained.outputs.metrics, "metrics/train.json"),
        (trained.outputs.curves, "plots/train_curves.csv"),
    ):
        (root / target).parent.mkdir(exist_ok=True)
        shutil.copy(source, root / target)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DVC_ROOT", str(root))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        client = store.client()
        run = client.create_run(store.experiment_id(client, "killed"), run_name="trained")
        records.write_run_file(root / "models" / "mlflow_run.json", run.info.run_id, "killed")
    for stage in ("prepare", "separate", "evaluate", "report"):
        run_stage_in_process(root, stage)
    return root


def _reference(project: Path, output: str, tmp_path: Path) -> Path:
    """A copy of a stage's output from the clean run."""
    return shutil.copytree(project / output, tmp_path / "reference")


def _same_tree(folder: Path, reference: Path, compare) -> None:
    assert listing(folder) == listing(reference)
    for path in reference.rglob("*"):
        if path.is_file():
            compare(folder / path.relative_to(reference), path)


def _same_bytes(a: Path, b: Path) -> None:
    assert a.read_bytes() == b.read_bytes(), a


def _same_audio_or_bytes(a: Path, b: Path) -> None:
    if a.suffix in (".wav", ".flac"):
        import soundfile as sf

        np.testing.assert_allclose(sf.read(a)[0], sf.read(b)[0], atol=1e-6, err_msg=str(a))
    else:
        _same_bytes(a, b)


def _stop_three_ways_then_finish(
    root: Path, stage: str, pause_at: str, outputs: list[str], next_stage_refuses, monkeypatch, capsys, tmp_path,
    resumable: bool = False,
) -> None:  # fmt: skip
    """Stop the stage with each signal (its outputs removed first, as DVC does), then run it to the end.
    ``resumable``: the stage keeps its fixed-name temporary folder to continue from, whatever the signal."""
    for output in outputs:
        if (root / output).is_dir():
            shutil.rmtree(root / output)
        (root / output).unlink(missing_ok=True)
    before = project_files(root)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        if sig == signal.SIGKILL:
            killed_in_process(root, stage, pause_at, monkeypatch, tmp_path / "killed")
        else:
            signal_in_process(root, stage, pause_at, sig, monkeypatch, capsys)
        assert not any((root / output).exists() for output in outputs)
        next_stage_refuses()
        left = project_files(root) - before
        if sig == signal.SIGKILL or resumable:  # at most the fixed-name temporary folder is left
            tmp = Path(outputs[0]).with_name(f".{Path(outputs[0]).name}.tmp")
            assert all(Path(p).is_relative_to(tmp) for p in left), left
        else:
            assert left == set(), left
    run_stage_in_process(root, stage)
    written = {
        str(p.relative_to(root))
        for output in outputs
        for p in [root / output, *(root / output).rglob("*")]
        if p.is_file()
    }
    assert project_files(root) - before == written


def test_killed_prepare(tmp_path, small_dataset, project, monkeypatch, capsys):
    root = new_project(tmp_path / "project", small_dataset.parent)

    def refused():
        with pytest.raises(DataError, match="not a prepared cache"):
            Cache(root / "data" / "cache")

    _stop_three_ways_then_finish(
        root, "prepare", "lightsaft.prepare:prepare_track", ["data/cache"], refused, monkeypatch, capsys, tmp_path,
        resumable=True,
    )  # fmt: skip
    cache, reference = Cache(root / "data" / "cache", 256, 64), Cache(project / "data" / "cache", 256, 64)
    assert cache.manifest == reference.manifest
    for name in cache.tracks("train"):
        np.testing.assert_array_equal(cache.spec(name), reference.spec(name))


def test_killed_separate(project, tmp_path, monkeypatch, capsys):
    reference = _reference(project, "results/estimates", tmp_path)

    def refused():
        with pytest.raises(EvaluationError, match="run the separate stage first"):
            evaluate_tracks(Cache(project / "data" / "cache"), project / "results" / "estimates")

    _stop_three_ways_then_finish(
        project, "separate", "lightsaft.separation.estimates:separate_to_files", ["results/estimates"], refused,
        monkeypatch, capsys, tmp_path,
    )  # fmt: skip
    _same_tree(project / "results" / "estimates", reference, _same_audio_or_bytes)


@pytest.mark.slow  # its worker processes (two jobs), started for each stop: each imports torch
def test_killed_evaluate(project, tmp_path, monkeypatch, capsys):
    """Also: the workers do not outlive the stage stopped in the middle of their work."""
    reference = _reference(project, "results/scores", tmp_path)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["runtime"]["evaluate"]["jobs"] = 2  # a runtime param: the same scores
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    ours = psutil.Process()

    def workers() -> list[psutil.Process]:  # not multiprocessing's resource tracker, which stays
        return [p for p in ours.children(recursive=True) if "--multiprocessing-fork" in p.cmdline()]

    def refused():
        _, alive = psutil.wait_procs(workers(), timeout=30)
        assert not alive, [p.cmdline() for p in alive]
        with pytest.raises(ReportError, match="scores.csv: not found"):
            build_report(
                tmp_path / "report",
                cache=Cache(project / "data" / "cache"),
                scores_dir=project / "results" / "scores",
                estimates_dir=project / "results" / "estimates",
                curves_csv=project / "plots" / "train_curves.csv",
                train_metrics=project / "metrics" / "train.json",
                model_params=params["model"],
            )

    try:
        _stop_three_ways_then_finish(
            project,
            "evaluate",
            "lightsaft.evaluation.engines:_outcome",
            ["results/scores", "metrics/sdr.json", "plots/sdr_per_target.csv"],
            refused,
            monkeypatch,
            capsys,
            tmp_path,
        )
    finally:
        params["runtime"]["evaluate"]["jobs"] = 1
        (project / "params.yaml").write_text(yaml.safe_dump(params))
    _same_tree(project / "results" / "scores", reference, _same_bytes)


def test_killed_report(project, tmp_path, monkeypatch, capsys):
    reference = _reference(project, "results/report", tmp_path)
    run_id = json.loads((project / "models" / "mlflow_run.json").read_text())["run_id"]
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    shutil.rmtree(Path(client.get_run(run_id).info.artifact_uri.removeprefix("file://")) / "report")

    def refused():
        assert not client.list_artifacts(run_id, "report")

    _stop_three_ways_then_finish(
        project, "report", "lightsaft.report.results:write_excerpts", ["results/report"], refused, monkeypatch,
        capsys, tmp_path,
    )  # fmt: skip
    _same_tree(project / "results" / "report", reference, _same_bytes)
    assert client.list_artifacts(run_id, "report")


# A stage killed outright: its worker processes notice and exit (they would otherwise wait for
# tasks forever). A process of its own, SIGKILL, the real pool; each worker says "ready" (straight
# to the inherited stdout) once started, which includes watching its parent.
POOL_PARENT = """
import os, sys, time
from lightsaft.workers import running
with running(2, os.write, (1, b"ready\\n")) as pool:
    futures = [pool.submit(time.sleep, 600) for _ in range(2)]
    while len(pool._processes or {}) < 2:
        time.sleep(0.05)
    print(" ".join(str(pid) for pid in pool._processes), flush=True)
    time.sleep(600)
"""


@pytest.mark.slow  # two spawned workers, each importing torch
@pytest.mark.parametrize("when", ["working", "starting"])
def test_workers_exit_when_their_stage_is_killed_outright(when):
    """``working``: each worker has started (and watches its parent); ``starting``: the stage is
    killed while its workers still import torch (they once lived on, waiting for tasks)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    parent = subprocess.Popen([sys.executable, "-c", POOL_PARENT], env=env, stdout=subprocess.PIPE, text=True)
    workers = []
    try:
        lines = [parent.stdout.readline() for _ in range(3 if when == "working" else 1)]  # pids, "ready"s
        workers += [psutil.Process(int(pid)) for line in lines if line != "ready\n" for pid in line.split()]
        assert len(workers) == 2 and lines.count("ready\n") == len(lines) - 1, lines
        parent.kill()
        assert parent.wait(timeout=30) == -signal.SIGKILL
        _, alive = psutil.wait_procs(workers, timeout=90)  # starting: after their imports
        assert not alive, [p.cmdline() for p in alive]
    finally:
        parent.kill()
        parent.wait()
        for worker in workers:  # no longer our children: gone with their parent, or orphans
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.kill()
