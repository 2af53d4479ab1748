"""Studies on a SLURM cluster (``lightsaft ablate --executor slurm``).

The options and their checks run in-process. The rest runs against a real one-node SLURM on this
machine (tests/slurm_cluster.py) and a real MLflow tracking server: one submission of a four-point
tiny study, shared by the tests below, from a fresh repository of the working tree:

- ``plain``: the pipeline as it is;
- ``fails-once``: ``train.pretrained`` names a weights file that is not there yet: the train stage
  fails; the test then puts the file in place and runs the command again (the pipeline with a given
  model instead of a training: prepare computes the test tracks only, train imports the model);
- ``signalled``: a longer training, sent SLURM's time-limit signal (``scancel --signal=USR2``)
  once it has finished an epoch: it must save, be requeued and finish in the same run;
- ``ddp``: two training processes (``trainer.devices: 2``), started by the train stage with srun.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import yaml
from helpers import REPO, TINY_MODEL, make_project, repo_env, snapshot_repo

from lightsaft.cli import main
from lightsaft.errors import ConfigError
from lightsaft.model.unet import build_model
from lightsaft.paths import project_root
from lightsaft.study import disk, slurm
from lightsaft.study.cluster import ClusterOptions, Resources, parse_mem, parse_sbatch, parse_time, resources
from lightsaft.study.compare import METRIC_COLUMNS
from lightsaft.training import job_step
from lightsaft.weights.ours import save_weights

STUDY = "slurm-ci"
EPOCHS, ITEMS, BATCH = 2, 48, 8  # the points' training: 6 steps an epoch on one process
SIGNALLED_EPOCHS, SIGNALLED_ITEMS = 4, 200  # 25 steps an epoch: time to signal it after the first
STUDY_FILE = {
    "study": STUDY,
    "set": {
        **{f"model.{key}": value for key, value in TINY_MODEL.items()},
        "data.source": "synthetic",
        "data.synthetic.train_tracks": 3,
        "data.synthetic.valid_tracks": 1,
        "data.synthetic.test_tracks": 1,
        "data.synthetic.seconds": 4.0,
        "train.init": "pytorch",
        "train.items_per_epoch": ITEMS,
        "train.valid_chunks_per_track": 2,
        "trainer.accelerator": "cpu",
        "trainer.precision": "32",
        "trainer.max_epochs": EPOCHS,
        "trainer.batch_size": BATCH,
        "trainer.log_every_n_steps": 1,
        "runtime.train.num_workers": 0,
        "runtime.prepare.jobs": 1,
        "runtime.evaluate.jobs": 1,
        "report.excerpt_seconds": 1.0,
        "report.audio_format": "wav",
        "mlflow.experiment": STUDY,
    },
    "points": [
        {"name": "plain", "set": {}},
        {"name": "fails-once", "set": {"train.pretrained": "weights/tiny.pt"}},
        {
            "name": "signalled",
            "set": {"trainer.max_epochs": SIGNALLED_EPOCHS, "train.items_per_epoch": SIGNALLED_ITEMS},
        },
        {"name": "ddp", "set": {"trainer.devices": 2, "trainer.strategy": "ddp"}},
    ],
}
POINTS = [f"{STUDY}-{p['name']}" for p in STUDY_FILE["points"]]
SUBMIT = ["--executor", "slurm", "--time", "20", "--cpus-per-point", "2", "--max-running", "2"]


# ---------------------------------------------------------------------------------------
# Options and their checks (in-process)
def test_time_limits_and_memory_are_read_as_sbatch_reads_them():
    assert [parse_time(t) for t in ("90", "10:30", "1:30:00", "1-12", "2-00:00:00")] == [90, 11, 90, 2160, 2880]
    for bad in ("", "0", "1h", "1:2:3:4"):
        with pytest.raises(ConfigError, match="--time"):
            parse_time(bad)
    assert [parse_mem(m) for m in ("64G", "500M", "1T", "1000", "2.5G", "512K")] == [65536, 500, 1048576, 1000, 2560, 1]
    with pytest.raises(ConfigError, match="--mem-per-point 'lots'"):
        parse_mem("lots")


def test_extra_sbatch_options_pass_and_those_lightsaft_sets_are_refused():
    assert parse_sbatch(["--account=proj", "--qos=high", "--exclusive"]) == (
        ("account", "proj"),
        ("qos", "high"),
        ("exclusive", True),
    )
    with pytest.raises(ConfigError, match="lightsaft sets --time itself; use --time"):
        parse_sbatch(["--time=10"])
    with pytest.raises(ConfigError, match="--gpus-per-node itself; use --gpus-per-point"):
        parse_sbatch(["--gpus-per-node=2"])
    with pytest.raises(ConfigError, match="long form"):
        parse_sbatch(["-A proj"])


def trainer(**values) -> dict:
    return {"devices": 1, "num_nodes": 1, "accelerator": "auto", **values}


def test_a_points_resources_follow_its_trainer_params():
    options = ClusterOptions(time_min=60, cpus=16, mem_mb=65536)
    assert resources("p", trainer(devices=2, num_nodes=2), options) == Resources(2, 2, 2, 4, 32768)
    assert resources("p", trainer(accelerator="cpu"), ClusterOptions(time_min=60)) == Resources(1, 1, 0, None, None)
    no_gpu = ClusterOptions(time_min=60, gpus=0)
    assert resources("p", trainer(devices=2), no_gpu) == Resources(1, 2, 0, None, None)  # auto on CPUs


@pytest.mark.parametrize(
    "values,options,message",
    [
        ({"accelerator": "cpu"}, {"gpus": 1}, r"--gpus-per-point 1 contradicts trainer.accelerator = 'cpu'"),
        ({"devices": 2}, {"gpus": 3}, r"--gpus-per-point 3 contradicts trainer.devices 2 x trainer.num_nodes 1"),
        ({"accelerator": "gpu"}, {"gpus": 0}, r"--gpus-per-point 0 contradicts"),
        ({"devices": 2, "num_nodes": 2}, {"cpus": 6}, r"--cpus-per-point 6 does not split evenly .* multiple of 4"),
        ({"devices": [0, 1]}, {}, r"trainer.devices = \[0, 1\]: on a cluster SLURM assigns the devices"),
        ({"devices": "auto"}, {}, r"trainer.devices = 'auto'"),
    ],
    ids=["gpus-on-cpu", "gpus-vs-devices", "no-gpus-for-gpu", "cpus-uneven", "device-ids", "devices-auto"],
)
def test_options_that_contradict_the_params_are_refused(values, options, message):
    with pytest.raises(ConfigError, match=f"point p: {message}"):
        resources("p", trainer(**values), ClusterOptions(time_min=60, **options))


def small_repo(root: Path, study: dict) -> Path:
    """A git repository with the project's params.yaml and a study file, committed."""
    make_project(root)
    (root / "params.yaml").write_text((REPO / "params.yaml").read_text())
    (root / "study.yaml").write_text(yaml.safe_dump(study))
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "study"]):
        subprocess.run(["git", *args], cwd=root, check=True, env=repo_env(), capture_output=True)
    return root


def test_a_study_is_refused_before_anything_is_submitted(tmp_path, monkeypatch, capsys):
    """Contradicting options, uncommitted changes, no tracking server: one error line each, and
    nothing submitted or written."""
    repo = small_repo(
        tmp_path / "repo", {"study": "s", "set": {"trainer.accelerator": "cpu"}, "grid": {"model.dk": [8, 16]}}
    )
    monkeypatch.chdir(repo)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")

    def no_space(*args, **kwargs):
        raise ConfigError("the study needs more space than is free")

    monkeypatch.setattr(disk, "check_space", no_space)  # the study's own faults are named first

    def ablate(*args: str) -> str:
        assert main(["ablate", "study.yaml", *args]) == 2
        return capsys.readouterr().err

    assert "point s-dk8: --gpus-per-point 1 contradicts trainer.accelerator = 'cpu'" in ablate(
        "--executor", "slurm", "--time", "60", "--gpus-per-point", "1"
    )
    assert "--partition: option(s) of --executor slurm" in ablate("--partition", "gpu")
    assert "--executor slurm needs --time" in ablate("--executor", "slurm")
    (repo / "params.yaml").write_text((repo / "params.yaml").read_text() + "\n# edited\n")
    (repo / "notes.txt").write_text("new")
    assert "has uncommitted changes: params.yaml, notes.txt. The points run the commit (HEAD)" in ablate(
        "--executor", "slurm", "--time", "60"
    )
    subprocess.run(["git", "commit", "-qam", "edit"], cwd=repo, check=True, env=repo_env())
    (repo / "notes.txt").unlink()
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert "MLFLOW_TRACKING_URI is not set: --executor slurm needs an MLflow tracking server" in ablate(
        "--executor", "slurm", "--time", "60"
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{repo}/mlflow.db")
    assert "is sqlite:///" in ablate("--executor", "slurm", "--time", "60")
    assert not (repo / ".lightsaft").exists() and not (repo / "mlflow.db").exists()


def test_user_paths_resolve_against_the_repository_that_holds_a_cluster_clone(tmp_path, monkeypatch):
    repo = make_project(tmp_path / "repo")
    clone = make_project(repo / ".lightsaft" / "slurm" / "clones" / "study" / "point")
    monkeypatch.setenv("DVC_ROOT", str(clone))  # what dvc exp run sets in the clone
    assert project_root() == repo


def test_a_points_state_from_its_record_its_result_its_log_and_squeue(tmp_path):
    """Done from the repository's refs; queued and running from squeue; failed from the job's
    report or, for a job that ended without one, from squeue and the log; missing otherwise."""
    place = slurm.Place(tmp_path, "s")
    log, prep_log = tmp_path / "7_0_log.out", tmp_path / "6_0_log.out"

    def record(name: str, job: str, **extra) -> None:
        place.point(name, "json").parent.mkdir(parents=True, exist_ok=True)
        data = {"job": job, "log": str(log), "prepare": "6", "prepare_key": "k", **extra}
        place.point(name, "json").write_text(json.dumps(data))

    def state(name: str, queue: dict, refs: dict | None = None) -> tuple:
        s = slurm.point_status(place, name, refs or {}, queue)
        return s.state, s.job, s.detail

    assert state("a", {}) == ("missing", None, "not submitted")
    record("a", "7")
    assert state("a", {}, {"a": "refs/exps/x/y/a"})[0] == "done"
    assert state("a", {"7": ("PENDING", "Dependency")}) == ("queued", "7", "waiting for its prepare job 6")
    assert state("a", {"7": ("PENDING", "BeginTime")}) == ("queued", "7", "BeginTime")
    assert state("a", {"7": ("RUNNING", "None")}) == ("running", "7", "")
    assert state("a", {"7": ("TIMEOUT", "TimeLimit")}) == (
        "failed",
        "7",
        "the job ended without a result (TIMEOUT, TimeLimit)",
    )
    log.write_text("Running stage 'train':\nslurmstepd: error: *** JOB 7 ON n1 CANCELLED DUE TO TIME LIMIT ***\n")
    assert state("a", {})[2] == "slurmstepd: error: *** JOB 7 ON n1 CANCELLED DUE TO TIME LIMIT ***"
    place.point("a", "result.json").write_text(json.dumps({"job": "7", "status": "failed", "message": "dvc failed"}))
    log.write_text("ERROR: failed to reproduce 'train'\nerror: train: trainer.batch_size = 64 is larger\n")
    assert state("a", {"7": ("FAILED", "NonZeroExitCode")}) == (
        "failed",
        "7",
        "error: train: trainer.batch_size = 64 is larger",
    )
    record("a", "8")  # submitted again: the old job's report is not this job's
    assert state("a", {"8": ("PENDING", "Priority")})[0] == "queued"
    log.unlink()  # it never started: its prepare job failed
    place.prepare("k", "json").parent.mkdir(parents=True)
    place.prepare("k", "json").write_text(json.dumps({"job": "6", "log": str(prep_log)}))
    place.prepare("k", "result.json").write_text(json.dumps({"job": "6", "status": "failed", "message": "no data"}))
    found = slurm.point_status(place, "a", {}, {"8": ("CANCELLED", "DependencyNeverSatisfied")})
    assert (found.state, found.log, found.detail) == ("failed", prep_log, "its prepare job 6 failed: no data")


def test_the_train_stage_starts_one_task_per_training_process(monkeypatch):
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4")
    cmd = job_step.command({"devices": 2, "num_nodes": 3}, ["pipeline/train.py"])
    assert cmd[0] == "srun" and cmd[-1] == "pipeline/train.py"
    assert {"--nodes=3", "--ntasks=6", "--ntasks-per-node=2", "--cpus-per-task=4", "--kill-on-bad-exit=1"} <= set(cmd)


# ---------------------------------------------------------------------------------------
# Against a real SLURM: one submission, four points
def ablate(repo: Path, env: dict, *args: str, timeout: float = 600) -> str:
    done = subprocess.run(
        ["lightsaft", "ablate", "experiments/slurm_ci.yaml", *args],
        cwd=repo, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done.stdout


def wait_for(what: str, check, timeout: float, logs: Path):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > deadline:
            tails = "".join(
                f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in sorted(logs.glob("*.out"))
            )
            pytest.fail(f"{what}: not within {timeout} s\n{tails}")
        time.sleep(2)
    return found


@pytest.fixture(scope="module")
def cluster_study(slurm_cluster, mlflow_server, tmp_path_factory) -> SimpleNamespace:
    """The study submitted once; the signalled point signalled; after the first round has ended
    the missing weights put in place and the command run again with --wait."""
    from mlflow.tracking import MlflowClient

    started = time.monotonic()
    place = tmp_path_factory.mktemp("slurm")
    torch.manual_seed(0)  # the weights the failing point asks for: made now (their hash pinned), put in place later
    save_weights(place / "tiny.pt", build_model(TINY_MODEL), TINY_MODEL)
    study_file = copy.deepcopy(STUDY_FILE)
    failing = next(p for p in study_file["points"] if p["name"] == "fails-once")
    failing["set"]["train.pretrained_sha256"] = hashlib.sha256((place / "tiny.pt").read_bytes()).hexdigest()
    repo = snapshot_repo(place / "repo")
    (repo / "experiments" / "slurm_ci.yaml").write_text(yaml.safe_dump(study_file, sort_keys=False))
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True, env=repo_env())
    subprocess.run(["git", "commit", "-qm", "the cluster study"], cwd=repo, check=True, env=repo_env())
    env = repo_env() | {"MLFLOW_TRACKING_URI": mlflow_server, "OMP_NUM_THREADS": "1"}
    jobs = repo / ".lightsaft" / "slurm" / "jobs"

    submitted = ablate(repo, env, *SUBMIT)
    first_status = ablate(repo, env, "--status")

    client = MlflowClient(mlflow_server)

    def signalled_has_an_epoch():
        exp = client.get_experiment_by_name(STUDY)
        runs = client.search_runs([exp.experiment_id], f"tags.dvc_experiment = '{STUDY}-signalled'") if exp else []
        return runs and "val_loss" in runs[0].data.metrics

    wait_for("the signalled point's first epoch", signalled_has_an_epoch, 300, jobs)
    record = json.loads((repo / ".lightsaft/slurm/studies" / STUDY / f"{STUDY}-signalled.json").read_text())
    subprocess.run(["scancel", "--signal=USR2", record["job"]], check=True, env=env)

    def first_round_over():
        text = ablate(repo, env, "--status")
        return text if not re.search(r"^\s+(queued|running)\s", text, re.M) else None

    ended = wait_for("the first round of jobs", first_round_over, 400, jobs)
    first_round_s = time.monotonic() - started

    (repo / "weights").mkdir(exist_ok=True)
    shutil.copyfile(place / "tiny.pt", repo / "weights" / "tiny.pt")
    again = ablate(repo, env, *SUBMIT, "--wait")
    return SimpleNamespace(
        repo=repo, env=env, jobs=jobs, client=client, submitted=submitted, first_status=first_status,
        ended=ended, again=again, signalled_job=record["job"], first_round_s=first_round_s,
        total_s=time.monotonic() - started,
    )  # fmt: skip


def point_log(study: SimpleNamespace, name: str) -> str:
    record = json.loads((study.repo / ".lightsaft/slurm/studies" / STUDY / f"{STUDY}-{name}.json").read_text())
    return Path(record["log"]).read_text(errors="replace")


def training_runs(study: SimpleNamespace) -> dict[str, list]:
    exp = study.client.get_experiment_by_name(STUDY)
    by_point: dict[str, list] = {}
    for run in study.client.search_runs([exp.experiment_id], "tags.stage LIKE 'train%'"):
        by_point.setdefault(run.data.tags.get("dvc_experiment"), []).append(run)
    return by_point


def experiment_metrics(repo: Path, name: str, path: str) -> dict:
    ref = next(r for r in subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps/"], cwd=repo,
               capture_output=True, text=True).stdout.split() if r.endswith(f"/{name}"))  # fmt: skip
    return json.loads(subprocess.run(["git", "show", f"{ref}:{path}"], cwd=repo, capture_output=True, text=True).stdout)


@pytest.mark.slow
def test_submission_returns_with_the_commands_to_follow_the_study(cluster_study):
    out = cluster_study.submitted
    assert "lightsaft ablate experiments/slurm_ci.yaml --status" in out
    assert "lightsaft ablate experiments/slurm_ci.yaml --compare-only" in out
    assert len(re.findall(r"^submitted download \+ prepare", out, re.M)) == 2  # two distinct prepare inputs
    assert re.search(r"^\s+(queued|running)\s", cluster_study.first_status, re.M)  # it did not wait


def job_script(study: SimpleNamespace, name: str) -> set[str]:
    """The #SBATCH lines of a point's job (one script per job array)."""
    record = json.loads((study.repo / ".lightsaft/slurm/studies" / STUDY / f"{STUDY}-{name}.json").read_text())
    script = study.jobs / f"{record['job'].split('_')[0]}_submission.sh"
    return {line.removeprefix("#SBATCH ") for line in script.read_text().splitlines() if line.startswith("#SBATCH")}


@pytest.mark.slow
def test_the_jobs_ask_slurm_for_what_the_options_and_params_say(cluster_study):
    """--time 20, --cpus-per-point 2 and --max-running 2 as sbatch options; the signal 5 minutes
    before the limit, requeueing, the wait for the prepare job; the DDP point's two tasks."""
    signalled, ddp = job_script(cluster_study, "signalled"), job_script(cluster_study, "ddp")
    common = {"--time=20", "--signal=USR2@300", "--requeue", "--kill-on-invalid-dep=yes", "--nodes=1"}
    assert common <= signalled and common <= ddp
    assert {"--array=0-1%2", "--ntasks-per-node=1", "--cpus-per-task=2"} <= signalled, signalled  # plain, signalled
    assert {"--ntasks-per-node=2", "--cpus-per-task=1"} <= ddp and not any("--gpus" in o for o in ddp), ddp
    assert any(o.startswith("--dependency=afterok:") for o in signalled)


@pytest.mark.slow
def test_every_point_is_an_experiment_of_the_repository_with_one_mlflow_run(cluster_study):
    """(a) Every point is a DVC experiment of the user's repository, with its metrics and one MLflow
    run; download and prepare ran once per distinct prepare input; the comparison reads cluster
    points as it reads local ones."""
    repo = cluster_study.repo
    shown = json.loads(subprocess.run(["dvc", "exp", "show", "--json"], cwd=repo, env=cluster_study.env,
                                      capture_output=True, text=True, check=True).stdout)  # fmt: skip
    experiments = {e["name"]: e for row in shown for e in row.get("experiments") or []}
    assert set(POINTS) <= set(experiments), sorted(experiments)
    for name in POINTS:
        metrics = experiments[name]["revs"][0]["data"]["metrics"]
        assert metrics["metrics/sdr.json"]["data"]["sdr_vocals"] is not None, name
    runs = training_runs(cluster_study)
    for name in POINTS:
        assert len(runs.get(name, [])) == 1, (name, {k: len(v) for k, v in runs.items()})
        [run] = runs[name]
        assert run.info.status == "FINISHED" and "test_sdr_vocals" in run.data.metrics, name
    logs = {p.name: p.read_text(errors="replace") for p in cluster_study.jobs.glob("*_log.out")}
    prepared = [name for name, text in logs.items() if "Running stage 'prepare'" in text]
    downloaded = [name for name, text in logs.items() if "Running stage 'download'" in text]
    assert len(prepared) == 2 and len(downloaded) == 1, (prepared, downloaded)  # two inputs, one data set
    for name in ("plain", "signalled", "ddp", "fails-once"):
        assert re.search(r"Stage 'prepare' (is cached|didn't change)", point_log(cluster_study, name)), name

    ablate(repo, cluster_study.env, "--compare-only")
    table = pd.read_csv(repo / "results" / "ablations" / STUDY / "points.csv")
    assert list(table["experiment"]) == POINTS and set(table["status"]) == {"done"}
    assert list(table.columns) == ["experiment", "point", "status", *METRIC_COLUMNS, "mlflow_run_id"]
    trained = table[table["experiment"] != f"{STUDY}-fails-once"]
    columns = [c for c in METRIC_COLUMNS if c != "peak_gpu_mem_gb"]  # no GPU here
    assert trained[columns].notna().all().all(), trained
    assert set(table["mlflow_run_id"]) == {runs[name][0].info.run_id for name in POINTS}


@pytest.mark.slow
def test_the_signalled_training_was_requeued_and_finished_its_steps_in_one_run(cluster_study):
    """(b) SLURM's time-limit signal stopped the training alone, which saved its state; DVC and the
    job carried on, submitit requeued the job, and the training continued from its checkpoint in
    the same MLflow run and DVC experiment, ending with the planned steps."""
    log = point_log(cluster_study, "signalled")
    first, _, second = log.partition("restart 1 of this job")
    assert second, log[-3000:]
    assert "training interrupted (SIGTERMException); checkpoint saved" in first
    assert "ERROR: failed to reproduce 'train'" in first and "exited with 143" in first  # DVC saw it end
    assert "requeueing the job" in first and f"Requeued job {cluster_study.signalled_job}" in first
    assert "SLURM auto-requeueing enabled" not in log and "Traceback" not in log
    assert re.search(r"Restoring states from the checkpoint path at \S+/interrupted\.ckpt", second)
    assert "Stage 'prepare' didn't change" in second and "restart 2" not in log
    name = f"{STUDY}-signalled"
    metrics = experiment_metrics(cluster_study.repo, name, "metrics/train.json")
    planned = SIGNALLED_EPOCHS * SIGNALLED_ITEMS // BATCH
    assert (metrics["epochs"], metrics["steps"]) == (SIGNALLED_EPOCHS, planned)
    [run] = training_runs(cluster_study)[name]
    assert experiment_metrics(cluster_study.repo, name, "models/mlflow_run.json")["run_id"] == run.info.run_id
    steps = [m.step for m in cluster_study.client.get_metric_history(run.info.run_id, "train_loss_step")]
    assert max(steps) == planned - 1 and len(set(steps)) == planned, sorted(set(range(planned)) - set(steps))


@pytest.mark.slow
def test_the_failed_point_is_reported_with_its_log_and_alone_submitted_again(cluster_study):
    """(c) --status names the failed point, its log and its error; the next call submits that
    point alone (its data is prepared already), and it then finishes."""
    line = next(line for line in cluster_study.ended.splitlines() if f"{STUDY}-fails-once" in line)
    assert line.split()[0] == "failed", cluster_study.ended
    log = Path(re.search(r"log: (\S+)", line).group(1))
    assert "train.pretrained = 'weights/tiny.pt': no such file" in line
    assert "train.pretrained = 'weights/tiny.pt': no such file" in log.read_text()
    for other in ("plain", "signalled", "ddp"):
        assert re.search(rf"^\s+done\s+{STUDY}-{other}\s*$", cluster_study.ended, re.M), cluster_study.ended
    again = cluster_study.again
    assert re.findall(r"^submitted (\S+):", again, re.M) == [f"{STUDY}-fails-once"], again
    assert "download + prepare" not in again
    assert re.search(rf"Success\s+{STUDY}-fails-once", again), again[-3000:]
    metrics = experiment_metrics(cluster_study.repo, f"{STUDY}-fails-once", "metrics/train.json")
    assert metrics["pretrained"] == "weights/tiny.pt" and metrics["steps"] == 0
    # the pipeline with a given model: the train stage imported it, its run says from where (and the
    # evaluation's scores are on it: test_every_point_is_an_experiment_of_the_repository_with_one_mlflow_run)
    [run] = training_runs(cluster_study)[f"{STUDY}-fails-once"]
    assert run.data.tags["stage"] == "train (pretrained)" and run.data.tags["pretrained"] == "weights/tiny.pt"
    assert run.data.params["train.pretrained"] == "weights/tiny.pt" and len(run.data.tags["pretrained_sha256"]) == 64


@pytest.mark.slow
def test_the_ddp_point_trained_with_two_ranks(cluster_study):
    """(d) The train stage started two tasks with srun; each drew half the items of an epoch."""
    log = point_log(cluster_study, "ddp")
    assert re.search(r"train: srun .*--ntasks=2 .*: 2 training process\(es\) as a job step", log), log[-3000:]
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in log and "GLOBAL_RANK: 1, MEMBER: 2/2" in log
    metrics = experiment_metrics(cluster_study.repo, f"{STUDY}-ddp", "metrics/train.json")
    assert metrics["steps"] == EPOCHS * ITEMS // (BATCH * 2)  # the plain point: EPOCHS * ITEMS // BATCH
    assert experiment_metrics(cluster_study.repo, f"{STUDY}-plain", "metrics/train.json")["steps"] == EPOCHS * 6
    print(f"\nSLURM study: first round {cluster_study.first_round_s:.0f} s, in all {cluster_study.total_s:.0f} s")


def test_lightning_leaves_requeueing_to_the_study_under_slurm(tmp_path, monkeypatch):
    """Lightning's SLURM environment (ranks from SLURM_PROCID) without its own requeue on SIGUSR1:
    exactly one component requeues a job, the study's (submitit)."""
    import pytorch_lightning as pl
    from pytorch_lightning.plugins.environments import SLURMEnvironment

    from lightsaft.train import _trainer

    monkeypatch.setattr(pl.utilities.rank_zero.rank_zero_only, "rank", 0)
    for key, value in {"SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
                       "SLURM_JOB_NAME": "study", "SLURM_JOB_ID": "7", "SLURM_NODELIST": "node0"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    trainer_params = {"accelerator": "cpu", "devices": 1, "num_nodes": 1, "strategy": "auto", "sync_batchnorm": False,
                      "max_epochs": 1, "max_steps": -1, "limit_train_batches": 1.0, "limit_val_batches": 1.0,
                      "gradient_clip_val": None, "accumulate_grad_batches": 1, "deterministic": False,
                      "log_every_n_steps": 1, "check_val_every_n_epoch": 1}  # fmt: skip
    trainer = _trainer(trainer_params, 1, "32-true", [], tmp_path, 60)
    environment = trainer._accelerator_connector.cluster_environment
    assert isinstance(environment, SLURMEnvironment) and environment.auto_requeue is False
