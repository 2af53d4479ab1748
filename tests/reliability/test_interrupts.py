"""Killed stages: SIGINT, SIGTERM or SIGKILL in the middle of the work leaves nothing that DVC
or the next stage would take as complete, and the rerun gives the same output as a clean run.

Each stage runs as its own process (the real ``pipeline/<stage>.py``) with one function of the
package wrapped so that it stops, after doing its work once, until it is killed: the kill lands
while the stage is visibly working (a temporary folder half full), never by timing luck.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import (
    EPOCH_CHECKPOINT,
    KILLS,
    kill_while_working,
    make_project,
    run_stage,
    run_stage_in_process,
    tiny_params,
    training_project,
)
from mlflow.tracking import MlflowClient

from lightsaft.data.cache import Cache
from lightsaft.download import download
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
    "data.synthetic.train_tracks": 2,
    "data.synthetic.valid_tracks": 1,
    "data.synthetic.test_tracks": 1,
    "data.synthetic.seconds": 1.0,
    "runtime.prepare.jobs": 1,  # in the stage's process, where the pause hook is
    "runtime.evaluate.jobs": 2,
    "runtime.separate.batch_size": 64,
    "report.excerpt_seconds": 1.0,
    "mlflow.experiment": "killed",
}


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """A small synthetic data set (1-second tracks): data/raw of the download stage."""
    out = tmp_path_factory.mktemp("raw") / "raw"
    download(tiny_params(**SMALL)["data"], out)
    return out


def new_project(root: Path, raw: Path) -> Path:
    make_project(root)
    (root / "data").mkdir()
    os.symlink(raw, root / "data" / "raw")
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(**SMALL)))
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory, raw, trained):
    """A project with the session's trained model, run once through prepare, separate, evaluate
    and report: the reference outputs of a clean run."""
    root = new_project(tmp_path_factory.mktemp("killed"), raw)
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


def _kill_three_times_then_finish(
    root: Path, stage: str, pause_at: str, outputs: list[str], next_stage_refuses, resumable: bool = False
) -> None:
    """Kill the stage with each signal (its outputs removed first, as DVC does), then run it to the end.
    ``resumable``: the stage keeps its fixed-name temporary folder to continue from, whatever the signal."""
    for output in outputs:
        if (root / output).is_dir():
            shutil.rmtree(root / output)
        (root / output).unlink(missing_ok=True)
    before = project_files(root)
    for sig in KILLS:
        kill_while_working(root, stage, pause_at, sig)
        assert not any((root / output).exists() for output in outputs)
        next_stage_refuses()
        left = project_files(root) - before
        if sig == signal.SIGKILL or resumable:  # at most the fixed-name temporary folder is left
            tmp = Path(outputs[0]).with_name(f".{Path(outputs[0]).name}.tmp")
            assert all(Path(p).is_relative_to(tmp) for p in left), left
        else:
            assert left == set(), left
    run_stage(root, stage, timeout=300)
    written = {
        str(p.relative_to(root))
        for output in outputs
        for p in [root / output, *(root / output).rglob("*")]
        if p.is_file()
    }
    assert project_files(root) - before == written


def test_killed_prepare(tmp_path, raw, project):
    root = new_project(tmp_path / "project", raw)

    def refused():
        with pytest.raises(DataError, match="not a prepared cache"):
            Cache(root / "data" / "cache")

    _kill_three_times_then_finish(
        root, "prepare", "lightsaft.prepare:prepare_track", ["data/cache"], refused, resumable=True
    )
    cache, reference = Cache(root / "data" / "cache", 256, 64), Cache(project / "data" / "cache", 256, 64)
    assert cache.manifest == reference.manifest
    for name in cache.tracks("train"):
        np.testing.assert_array_equal(cache.spec(name), reference.spec(name))


def test_killed_separate(project, tmp_path):
    reference = _reference(project, "results/estimates", tmp_path)

    def refused():
        with pytest.raises(EvaluationError, match="run the separate stage first"):
            evaluate_tracks(Cache(project / "data" / "cache"), project / "results" / "estimates")

    _kill_three_times_then_finish(
        project, "separate", "lightsaft.separation.estimates:separate_to_files", ["results/estimates"], refused
    )
    _same_tree(project / "results" / "estimates", reference, _same_audio_or_bytes)


@pytest.mark.slow  # museval scores the track in every run that is killed: about 50 s on 2 cores
def test_killed_evaluate(project, tmp_path):
    reference = _reference(project, "results/scores", tmp_path)

    def refused():
        with pytest.raises(ReportError, match="scores.csv: not found"):
            build_report(
                tmp_path / "report",
                cache=Cache(project / "data" / "cache"),
                scores_dir=project / "results" / "scores",
                estimates_dir=project / "results" / "estimates",
                curves_csv=project / "plots" / "train_curves.csv",
                train_metrics=project / "metrics" / "train.json",
                weights=project / "models" / "weights.pt",
            )

    _kill_three_times_then_finish(
        project,
        "evaluate",
        "lightsaft.evaluation.engines:_outcome",
        ["results/scores", "metrics/sdr.json", "plots/sdr_per_target.csv"],
        refused,
    )
    _same_tree(project / "results" / "scores", reference, _same_bytes)


def test_killed_report(project, tmp_path):
    reference = _reference(project, "results/report", tmp_path)
    run_id = json.loads((project / "models" / "mlflow_run.json").read_text())["run_id"]
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    shutil.rmtree(Path(client.get_run(run_id).info.artifact_uri.removeprefix("file://")) / "report")

    def refused():
        assert not client.list_artifacts(run_id, "report")

    _kill_three_times_then_finish(
        project, "report", "lightsaft.report.results:write_excerpts", ["results/report"], refused
    )
    _same_tree(project / "results" / "report", reference, _same_bytes)
    assert client.list_artifacts(run_id, "report")


def test_training_killed_with_sigkill_resumes_from_its_last_epoch(tmp_path, synthetic_cache):
    """No interrupt checkpoint after SIGKILL: the rerun with train.resume continues from the
    epoch checkpoint, in the same MLflow run, and ends exactly as an uninterrupted training."""
    root = tmp_path
    params = training_project(root, synthetic_cache, epochs=3, experiment="sigkill")
    kill_while_working(root, "train", EPOCH_CHECKPOINT, signal.SIGKILL)
    assert not (root / "models").exists() and not (root / "metrics").exists()
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("sigkill").experiment_id])
    assert run.info.status == "RUNNING"

    params["runtime"]["train"]["resume"] = True
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    run_stage(root, "train")
    [run] = client.search_runs([client.get_experiment_by_name("sigkill").experiment_id])
    assert run.info.status == "FINISHED"
    assert json.loads((root / "models" / "mlflow_run.json").read_text())["run_id"] == run.info.run_id
    curves = (root / "plots" / "train_curves.csv").read_text().splitlines()[1:]
    assert [int(line.split(",")[0]) for line in curves] == [0, 1, 2]
    assert json.loads((root / "metrics" / "train.json").read_text())["steps"] == 3 * 8
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_loss")) == [7, 15, 23]
