"""End to end in a fresh clone: the demo pipeline, DVC's rerun rules, a queued ablation, MLflow.

CI-sized: a few seconds of synthetic audio and tens of training steps, so that the whole chain
(download -> prepare -> train -> separate -> evaluate -> report) runs several times in minutes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from lightsaft.data.cache import Cache

CI = {
    "data.synthetic.train_tracks": 3,
    "data.synthetic.valid_tracks": 1,
    "data.synthetic.test_tracks": 1,
    "data.synthetic.seconds": 4.0,
    "train.items_per_epoch": 48,
    "train.valid_chunks_per_track": 2,
    "trainer.max_epochs": 1,
    "report.excerpt_seconds": 2.0,
    "mlflow.experiment": "ci",
}
STAGES = ("download", "prepare", "train", "separate", "evaluate", "report")
pytestmark = pytest.mark.slow


def clone(dst: Path) -> Path:
    """A fresh repository holding the working tree as git sees it (tracked + untracked, not ignored)."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dst / name)
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "snapshot"]):
        subprocess.run(["git", *args], cwd=dst, check=True, env=_env())
    return dst


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    for who in ("AUTHOR", "COMMITTER"):
        env.setdefault(f"GIT_{who}_NAME", "LightSAFT tests")
        env.setdefault(f"GIT_{who}_EMAIL", "tests@example.org")
    return env


def run(repo: Path, *cmd: str, timeout: int = 900, stdout_only: bool = False) -> str:
    out = subprocess.run(list(cmd), cwd=repo, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    return out.stdout if stdout_only else out.stdout + out.stderr


def ran_stages(log: str) -> set[str]:
    return set(re.findall(r"Running stage '(\w+)'", log))


def set_params(repo: Path, **changes) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for key, value in changes.items():
        section, name = key.split("__")
        params[section][name] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def mlflow_runs(repo: Path, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def test_demo_then_rerun_rules_then_queued_ablation(tmp_path):
    repo = clone(tmp_path / "repo")
    sets = [arg for key, value in CI.items() for arg in ("--set", f"{key}={json.dumps(value)}")]

    # 1. the demo pipeline as a DVC experiment in a temporary copy
    log = run(repo, "lightsaft", "demo", *sets)
    assert ran_stages(log) == set(STAGES), log[-3000:]
    name = re.search(r"Experiment (demo-[\w-]+): test SDR", log).group(1)
    assert re.search(r"vocals\s+-?\d+\.\d\d\s+-?\d+\.\d\d", log)
    report = Path(re.findall(r"report:\s+(\S+index\.html)", log)[-1])  # the summary's line
    assert report.is_file() and (repo / "mlartifacts") in report.parents

    # every stage's outputs, brought into the workspace
    run(repo, "dvc", "exp", "apply", name)
    test_tracks = Cache(repo / "data/cache").tracks("test")
    assert len(test_tracks) == 1
    for path in [
        "data/raw/dataset.json",
        "models/weights.pt",
        "models/best.ckpt",
        "models/mlflow_run.json",
        "metrics/train.json",
        "plots/train_curves.csv",
        "results/scores/scores.csv",
        "results/scores/summary.csv",
        f"results/scores/museval/test/{test_tracks[0]}.json",
        "metrics/sdr.json",
        "plots/sdr_per_target.csv",
        "results/report/index.html",
        *[f"results/estimates/test/{test_tracks[0]}/{t}.wav" for t in ("vocals", "drums", "bass", "other")],
    ]:
        assert (repo / path).is_file(), path
    sdr = json.loads((repo / "metrics/sdr.json").read_text())
    assert {"sdr_vocals", "baseline_sdr_vocals", "sdr_improvement_vocals", "sdr_mean"} <= set(sdr)

    # 2. DVC's rerun rules
    assert not ran_stages(run(repo, "dvc", "repro")), "a second dvc repro must do nothing"
    params = yaml.safe_load((repo / "params.yaml").read_text())
    set_params(repo, train__lr=params["train"]["lr"] / 2)
    changed = json.loads(run(repo, "dvc", "status", "--json", stdout_only=True))
    assert set(changed) == {"train"}, changed  # download/prepare untouched by train.*
    set_params(repo, train__lr=params["train"]["lr"], runtime__evaluate={"jobs": 1, "device": "cpu"})
    assert not ran_stages(run(repo, "dvc", "repro")), "runtime settings must rerun nothing"
    set_params(repo, evaluate__engine="museval")
    log = run(repo, "dvc", "repro")
    assert ran_stages(log) <= {"evaluate", "report"} and "evaluate" in ran_stages(log), log[-3000:]
    run(repo, "git", "checkout", "params.yaml", "dvc.lock")

    # 3. a queued two-point ablation; the first point equals the demo, so DVC restores all its
    # stages from the run cache and nothing runs: it must still get its MLflow run
    demo_dk = params["model"]["dk"]
    grid = {"study": "ci-grid", "base": "demo.yaml", "set": CI, "grid": {"model.dk": [demo_dk, demo_dk * 2]}}
    (repo / "experiments" / "ci_grid.yaml").write_text(yaml.safe_dump(grid))
    log = run(repo, "lightsaft", "ablate", "experiments/ci_grid.yaml", "--jobs", "1", timeout=1500)
    names = [f"ci-grid-dk{demo_dk}", f"ci-grid-dk{demo_dk * 2}"]
    for n in names:
        assert re.search(rf"Success\s+{n}\b", log), log[-3000:]
        point_log = (repo / "results/ablations/ci-grid/logs" / f"{n}.log").read_text()
        assert "Running stage 'download'" not in point_log and "Running stage 'prepare'" not in point_log
    restored = (repo / "results/ablations/ci-grid/logs" / f"{names[0]}.log").read_text()
    assert "Running stage 'train'" not in restored, restored[-2000:]

    text = json.dumps(json.loads(run(repo, "dvc", "exp", "show", "--json", stdout_only=True)))
    for n in names:
        assert n in text
    assert text.count('"sdr_vocals"') >= 3  # demo + both points

    runs = {
        r.data.tags.get("dvc_experiment"): r for r in mlflow_runs(repo, "ci") if "mlflow.parentRunId" not in r.data.tags
    }
    for n in names:
        assert n in runs, sorted(filter(None, runs))
        assert runs[n].data.params["model.dk"] == str(demo_dk if n == names[0] else demo_dk * 2)
        assert "test_sdr_vocals" in runs[n].data.metrics
    assert runs[names[0]].data.tags.get("restored_from_run_cache")
    points = (repo / "results/ablations/ci-grid/points.csv").read_text().splitlines()
    assert points[0].startswith("experiment,status,model.dk") and len(points) == 3
    assert all(",done," in line for line in points[1:])
    assert (repo / "results/ablations/ci-grid/sdr.png").stat().st_size > 1000
