"""End to end in a fresh clone: the demo pipeline, DVC's rerun rules, a queued ablation, MLflow.

CI-sized: a few seconds of synthetic audio and a few training steps, so that the whole chain
(download -> prepare -> train -> separate -> evaluate -> report) runs several times in minutes:
about 20 stage processes in all, each an interpreter importing torch, Lightning and MLflow.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import yaml
from helpers import (
    api,
    empty_mlflow_db,
    free_port,
    lightsaft_ui,
    repo_env,
    snapshot_repo,
    ui_links,
)

from lightsaft.data.cache import Cache
from lightsaft.errors import WeightsError
from lightsaft.paths import file_sha256
from lightsaft.weights.resolve import resolve_model

CI = {
    "data.synthetic.train_tracks": 3,
    "data.synthetic.valid_tracks": 1,
    "data.synthetic.test_tracks": 1,
    "data.synthetic.seconds": 2.0,
    "train.items_per_epoch": 48,
    "train.valid_chunks_per_track": 2,
    "trainer.max_epochs": 1,
    "report.excerpt_seconds": 2.0,
    "runtime.evaluate.jobs": 1,  # one test track: scored in the stage's process, no worker to start
    "mlflow.experiment": "ci",
}
STAGES = ("download", "prepare", "train", "separate", "evaluate", "report")
RECORDING_MODULES = ["src/lightsaft/progress.py", "src/lightsaft/tracking/training_run.py"]  # layout.CODE_CLASSES
MODEL_MODULE = "src/lightsaft/model/layers.py"
pytestmark = pytest.mark.slow


def run(repo: Path, *cmd: str, timeout: int = 900, stdout_only: bool = False) -> str:
    out = subprocess.run(list(cmd), cwd=repo, env=repo_env(), capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    return out.stdout if stdout_only else out.stdout + out.stderr


def ran_stages(log: str) -> set[str]:
    return set(re.findall(r"Running stage '(\w+)'", log))


def set_params(repo: Path, changes: dict) -> None:
    """Change dotted keys of the repository's params.yaml (``{"runtime.evaluate.jobs": 1}``)."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for key, value in changes.items():
        *sections, name = key.split(".")
        node = params
        for section in sections:
            node = node[section]
        assert name in node, key
        node[name] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def demo_name(demo) -> str:
    return re.search(r"Experiment (demo-[\w-]+): test SDR", demo.log).group(1)


def summary(demo) -> str:
    """The demo's closing summary: from its 'Experiment ...: test SDR' line on."""
    return demo.log[demo.log.rindex("\nExperiment ") :]


def printed_commands(text: str) -> list[str]:
    """The commands a summary tells the user to type: each `quoted` one, and the command of each
    ``label:   command   (comment)`` line (but ``report:``, which names a file)."""
    commands = re.findall(r"`([^`]+)`", text)
    for line in text.splitlines():
        if (found := re.match(r"(\w+):\s+(.+?)(?:\s{2,}\(.*)?$", line)) and found.group(1) != "report":
            commands.append(found.group(2))
    return commands


def mlflow_runs(repo: Path, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


# ---------------------------------------------------------------------------------------
# The steps below share one repository, in file order (pytest keeps it): each starts from the
# state the one before left. A failing step skips the rest, naming itself.
FAILED: list[str] = []


@pytest.fixture(autouse=True)
def in_order(request):
    if FAILED:
        pytest.skip(f"step {FAILED[0]} failed; the later steps need the state it leaves")
    failures = request.session.testsfailed
    yield
    if request.session.testsfailed > failures:
        FAILED.append(request.node.name)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> SimpleNamespace:
    """A fresh clone of the working tree in which `lightsaft demo` has run once (CI-sized)."""
    repo = snapshot_repo(tmp_path_factory.mktemp("pipeline") / "repo")
    shutil.copyfile(empty_mlflow_db(), repo / "mlflow.db")  # git ignores it; spares MLflow's migrations
    sets = [arg for key, value in CI.items() for arg in ("--set", f"{key}={json.dumps(value)}")]
    return SimpleNamespace(repo=repo, log=run(repo, "lightsaft", "demo", *sets), executed=set())


@pytest.fixture
def params_restored(demo):
    """The step may change params.yaml: afterwards the demo's params come back, and DVC puts
    the demo's outputs back from its run cache, running nothing."""
    before = (demo.repo / "params.yaml").read_text()
    yield
    (demo.repo / "params.yaml").write_text(before)
    log = run(demo.repo, "dvc", "repro")
    assert not ran_stages(log), f"the demo's params again, yet stages ran:\n{log[-3000:]}"


def test_demo_runs_every_stage_as_an_experiment(demo):
    assert ran_stages(demo.log) == set(STAGES), demo.log[-3000:]
    assert re.search(r"Experiment (demo-[\w-]+): test SDR", demo.log), demo.log[-3000:]
    assert re.search(r"vocals\s+-?\d+\.\d\d\s+-?\d+\.\d\d", demo.log)
    report = Path(re.findall(r"report:\s+(\S+index\.html)", demo.log)[-1])  # the summary's line
    assert report.is_file() and (demo.repo / "mlartifacts") in report.parents


def test_demo_outputs_of_every_stage(demo):
    """`dvc exp apply`, as the demo's summary prints it, brings every stage's outputs into the
    workspace (the next steps work there)."""
    repo, name = demo.repo, demo_name(demo)
    apply = next(command for command in printed_commands(summary(demo)) if command.startswith("dvc exp apply"))
    assert shlex.split(apply) == ["dvc", "exp", "apply", name]
    run(repo, *shlex.split(apply))
    demo.executed.add(apply)
    demo.weights_sha256 = file_sha256(repo / "models/weights.pt")  # the experiment's model
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
        "metrics/per_track_sdr.csv",
        "plots/sdr_per_target.csv",
        "results/report/index.html",
        *[f"results/estimates/test/{test_tracks[0]}/{t}.flac" for t in ("vocals", "drums", "bass", "other")],
    ]:
        assert (repo / path).is_file(), path
    sdr = json.loads((repo / "metrics/sdr.json").read_text())
    assert {"sdr_vocals", "baseline_sdr_vocals", "sdr_improvement_vocals", "sdr_mean"} <= set(sdr)
    assert {"sdr_mdx_vocals", "si_sdr_vocals", "sdr_mdx_mean", "si_sdr_mean"} <= set(sdr)  # the whole-track SDRs


def test_a_second_repro_does_nothing(demo):
    log = run(demo.repo, "dvc", "repro")
    assert not ran_stages(log), log[-3000:]


def test_runtime_params_rerun_nothing(demo, params_restored):
    """How a run executes (workers, devices, batch size, resume) is no stage's dependency."""
    set_params(
        demo.repo,
        {
            "runtime.train.resume": True,
            "runtime.train.num_workers": 1,
            "runtime.separate.batch_size": 3,
            "runtime.separate.device": "cpu",
            "runtime.evaluate.jobs": 2,
            "runtime.evaluate.device": "cpu",
        },
    )
    assert json.loads(run(demo.repo, "dvc", "status", "--json", stdout_only=True)) == {}
    log = run(demo.repo, "dvc", "repro")
    assert not ran_stages(log), log[-3000:]


def test_a_train_param_reruns_from_train(demo, params_restored):
    """Only the train stage depends on it (download and prepare are untouched by train.*); that
    the stages after it then run, and those before it do not, the ablation's second point shows
    (test_queued_ablation_gets_every_point_its_mlflow_run: four stage processes fewer here)."""
    lr = yaml.safe_load((demo.repo / "params.yaml").read_text())["train"]["lr"]
    set_params(demo.repo, {"train.lr": lr / 2})
    changed = json.loads(run(demo.repo, "dvc", "status", "--json", stdout_only=True))
    assert set(changed) == {"train"}, changed


def test_recording_changes_rerun_nothing_and_model_code_reruns_from_train(demo, params_restored):
    """Renaming the MLflow experiment or editing a recording module (progress bars, MLflow
    bookkeeping) leaves every stage up to date; editing the network's code puts train and separate
    (the stages that build the network) out of date, and nothing before them."""
    repo = demo.repo
    edited = {path: (repo / path).read_text() for path in RECORDING_MODULES + [MODEL_MODULE]}
    try:
        set_params(repo, {"mlflow.experiment": "renamed"})
        for path in RECORDING_MODULES:
            (repo / path).write_text(edited[path] + "\n# an edit that records differently\n")
        assert json.loads(run(repo, "dvc", "status", "--json", stdout_only=True)) == {}

        (repo / MODEL_MODULE).write_text(edited[MODEL_MODULE] + "\n# an edit to the network's code\n")
        changed = json.loads(run(repo, "dvc", "status", "--json", stdout_only=True))
        assert set(changed) == {"train", "separate"}, changed
    finally:
        for path, text in edited.items():
            (repo / path).write_text(text)


def test_an_evaluate_param_reruns_from_evaluate(demo, params_restored):
    """Only evaluate depends on it; report reruns when evaluate's outputs change (that the stages
    after a changed one run, the ablation's second point shows)."""
    set_params(demo.repo, {"evaluate.engine": "museval"})
    changed = json.loads(run(demo.repo, "dvc", "status", "--json", stdout_only=True))
    assert set(changed) == {"evaluate"}, changed


def test_queued_ablation_gets_every_point_its_mlflow_run(demo):
    """A queued two-point ablation; the first point equals the demo, so DVC restores all its
    stages from the run cache and nothing runs: it must still get its MLflow run."""
    repo = demo.repo
    demo_dk = yaml.safe_load((repo / "params.yaml").read_text())["model"]["dk"]
    # queued experiments start from the committed snapshot, not from the applied demo
    tracked = run(repo, "git", "ls-files", "params.yaml", "dvc.lock", stdout_only=True).split()
    run(repo, "git", "checkout", "--", *tracked)
    grid = {"study": "ci-grid", "base": "demo.yaml", "set": CI, "grid": {"model.dk": [demo_dk, demo_dk * 2]}}
    (repo / "experiments" / "ci_grid.yaml").write_text(yaml.safe_dump(grid))
    log = run(repo, "lightsaft", "ablate", "experiments/ci_grid.yaml", "--jobs", "1", timeout=1500)
    demo.ablate_log = log  # what it tells the user: a later step checks it
    names = [f"ci-grid-dk{demo_dk}", f"ci-grid-dk{demo_dk * 2}"]
    for n in names:
        assert re.search(rf"Success\s+{n}\b", log), log[-3000:]
        point_log = (repo / "results/ablations/ci-grid/logs" / f"{n}.log").read_text()
        assert "Running stage 'download'" not in point_log and "Running stage 'prepare'" not in point_log
    trained = (repo / "results/ablations/ci-grid/logs" / f"{names[1]}.log").read_text()
    assert ran_stages(trained) == {"train", "separate", "evaluate", "report"}, trained[-3000:]  # from train on
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
    assert points[0].startswith("experiment,point,status,model.dk") and len(points) == 3
    assert all(",done," in line for line in points[1:])
    assert (repo / "results/ablations/ci-grid/sdr.png").stat().st_size > 1000
    summary = (repo / "results/ablations/ci-grid/summary.md").read_text()  # paired on the demo's test tracks
    assert "difference vs reference [95% CI]" in summary and f"reference point **dk={demo_dk}**" in summary


# ---------------------------------------------------------------------------------------
# What the pipeline tells a user to type: each command runs and does what it says, each path exists.
def test_a_dvc_experiment_name_is_a_model_reference(demo, monkeypatch):
    """The demo's experiment by name, as `--model` and the train stage take it (base: the project):
    its models/weights.pt from the DVC cache; also a queued point restored from DVC's run cache.
    A name that is also a file, or an experiment of two baselines, is refused listing both."""
    repo, name = demo.repo, demo_name(demo)
    monkeypatch.setenv("DVC_ROOT", str(repo))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    found = resolve_model(name, base=repo, what="train.pretrained")
    assert (found.name, found.sha256) == (name, demo.weights_sha256) and "dvc.lock verified" in found.verified
    assert (repo / ".dvc" / "cache") in found.weights.parents
    refs = run(repo, "git", "for-each-ref", "--format=%(refname)", "refs/exps/", stdout_only=True).split()
    point = next(ref.rsplit("/", 1)[1] for ref in refs if "/ci-grid-" in ref)
    assert resolve_model(point, base=repo).name == point

    (repo / name).write_bytes(b"")
    try:
        with pytest.raises(WeightsError, match=f"'{name}' is ambiguous: it names 2 models") as error:
            resolve_model(name, base=repo)
        assert f"the file {repo / name} (give ./{name})" in str(error.value)
    finally:
        (repo / name).unlink()
    [ref] = [ref for ref in refs if ref.endswith(f"/{name}")]
    other = f"refs/exps/00/{'0' * 38}/{name}"  # the same name run from another baseline commit
    run(repo, "git", "update-ref", other, ref)
    try:
        with pytest.raises(WeightsError, match="ambiguous") as error:
            resolve_model(name, base=repo)
        assert f"({ref}) (give {ref})" in str(error.value) and f"({other}) (give {other})" in str(error.value)
        assert resolve_model(other, base=repo).sha256 == demo.weights_sha256
    finally:
        run(repo, "git", "update-ref", "-d", other)

    cached = found.weights.rename(found.weights.with_name("moved-away"))
    try:
        with pytest.raises(WeightsError, match=f"not in the DVC cache .*dvc exp pull <remote> {name}"):
            resolve_model(name, base=repo)
    finally:
        cached.rename(found.weights)


def test_every_command_the_demo_prints_works(demo, tmp_path):
    """The summary's commands, as printed (SONG... replaced by a song, a free port for the UI)."""
    repo, name, text = demo.repo, demo_name(demo), summary(demo)
    commands = printed_commands(text)
    assert f"--model {name} " in text  # the shortest form that works
    song = tmp_path / "My Song.wav"
    sound = np.random.default_rng(0).normal(0, 0.1, (44100, 2)).astype(np.float32)
    sf.write(song, sound, 44100)
    for command in commands:
        args = shlex.split(command)
        if command in demo.executed:
            continue
        if args == ["dvc", "exp", "show"]:
            assert name in run(repo, *args)
        elif args == ["lightsaft", "ui"]:
            experiment = re.search(r"MLflow: .* experiment '([^']+)'", text).group(1)
            check_ui(repo, args, experiment, name, tmp_path / "ui.log")
        elif args[:3] == ["lightsaft", "separate", "SONG..."]:
            out = run(repo, "lightsaft", "separate", str(song), *args[3:])
            page = repo / re.search(r"page: (\S+)", out).group(1)
            assert page.is_file() and page.parent.name == f"{name}-{demo.weights_sha256[:8]}", out
            stems = sorted(p.name for p in (page.parent / "My Song").iterdir())
            assert stems == ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]
            assert sf.info(str(page.parent / "My Song" / "vocals.wav")).frames == len(sound)
        elif args == ["lightsaft", "separate", "--help"]:
            usage = " ".join(run(repo, *args).split())
            assert "DVC experiment" in usage and "models:/<name>/<version>" in usage, usage
        else:
            pytest.fail(f"the demo prints {command!r}, which no test runs: add it here")
        demo.executed.add(command)
    assert set(commands) <= demo.executed and len(commands) >= 5, commands


def check_ui(repo: Path, args: list[str], experiment: str, name: str, log: Path) -> None:
    """`lightsaft ui` serves the pipeline's store and its link for ``experiment`` opens the runs
    where the demo's experiment ``name`` is."""
    port = free_port()
    with lightsaft_ui([*args, "--port", str(port)], repo, repo_env(), log, port) as ui:
        links = ui_links(ui.printed)
        assert experiment in links, ui.printed
        experiment_id = re.search(r"#/experiments/(\d+)/runs", links[experiment]).group(1)
        body = {"experiment_ids": [experiment_id], "filter": f"tags.dvc_experiment = '{name}'"}
        assert api(ui.base, "runs/search", body).get("runs"), f"no run of {name} in {links[experiment]}"


def test_every_path_the_ablation_prints_exists(demo):
    """`make ablate` (lightsaft ablate) prints each point's log, where the tables are and where its
    disk projection comes from; it asks the user to type no command (one it printed would need a
    check here)."""
    log = demo.ablate_log
    logs = re.findall(r"log: (\S+)", log)
    assert logs and all(Path(path).is_file() for path in logs), logs
    tables = re.search(r"tables and plot: (\S+)/\s+\(([^)]+)\)", log)
    for file in tables.group(2).split(", "):
        assert (Path(tables.group(1)) / file).is_file(), file
    printed = {path.rstrip(".,;:)") for path in re.findall(r"(?<![\w.~-])(/[^\s(:]+)", log)}
    missing = [path for path in printed if not Path(path).exists()]
    assert printed and not missing, f"lightsaft ablate printed paths that do not exist: {missing}"
    commands = re.findall(r"`((?:lightsaft|dvc|make|mlflow|python|git) [^`]*)`", log)
    assert not commands, f"lightsaft ablate prints {commands}: run them in this step"
