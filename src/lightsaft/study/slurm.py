"""A study on a SLURM cluster: submit its points, follow them, submit again what is missing or failed.

``lightsaft ablate STUDY --executor slurm`` submits, through submitit, one job per point (points
with the same resources and data go in one job array, ``--max-running`` of them at once), each
waiting for the job that downloads and prepares its data (one per distinct prepare input). A
point's job runs its DVC experiment in a clone of the user's repository at HEAD
(:mod:`lightsaft.study.clones`, :mod:`lightsaft.study.jobs`) and pushes it back, so a finished
point is an experiment of the user's repository like a local one.

The state of a study lives in ``.lightsaft/slurm/`` of the user's repository (on the cluster's
shared file system): submitit's job folder (scripts, logs), one record per submitted point (its
job and log) and what each job reported. ``--status`` reads these, the repository's experiment
refs (done) and ``squeue`` (queued, running: no accounting daemon needed).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import load_params, validate
from ..errors import LightSAFTError, redact
from ..paths import write_text_atomic
from ..schema import set_dotted
from .clones import cache_dir, head, uncommitted
from .cluster import ClusterOptions, Resources, resources
from .experiments import experiment_refs
from .jobs import PointJob, PrepareJob
from .studies import Point, Study

STATE = Path(".lightsaft") / "slurm"
POLL_S = 10.0
UNLIMITED = sys.maxsize  # requeues, when --max-requeues is not given
PREPARE_KEYS = ("data", "prepare", "model.n_fft", "model.hop_length", "train.pretrained")  # the prepare stage's params
# squeue's job states of a job that has yet to end
ACTIVE = {
    **dict.fromkeys(("PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "SUSPENDED"), "queued"),
    **dict.fromkeys(("RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING"), "running"),
}


class SlurmError(LightSAFTError):
    """The study cannot be submitted to SLURM as it is (the message says what to do)."""


@dataclass(frozen=True)
class Place:
    """Where the cluster side of a study lives in the user's repository."""

    repo: Path
    study: str

    @property
    def root(self) -> Path:
        return self.repo / STATE

    @property
    def jobs(self) -> Path:  # submitit's folder: job scripts, pickles, one log per job
        return self.root / "jobs"

    def point(self, name: str, kind: str) -> Path:  # kind: json (the submission), result.json, stopped
        return self.root / "studies" / self.study / f"{name}.{kind}"

    def prepare(self, key: str, kind: str) -> Path:
        return self.root / "prepare" / f"{key}.{kind}"

    def clone(self, name: str) -> Path:
        return self.root / "clones" / self.study / name

    def prepare_clone(self, key: str) -> Path:
        return self.root / "clones" / f"prepare-{key}"


@dataclass
class PointStatus:
    name: str
    state: str  # done, running, queued, failed, missing
    job: str | None = None
    log: Path | None = None
    detail: str = ""


# ---------------------------------------------------------------------------------------
# Status
def squeue() -> dict[str, tuple[str, str]]:
    """Job id -> (state, reason) for this user's jobs the controller knows: pending, running, and
    those that ended in the last few minutes (``MinJobAge``); array tasks one by one (``123_4``)."""
    if shutil.which("squeue") is None:
        raise SlurmError("squeue not found: run this on a machine with the SLURM client commands (a login node)")
    done = subprocess.run(
        ["squeue", "--noheader", "--array", "--states=all", "--me", "--format=%i|%T|%r"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SlurmError(f"squeue failed (exit {done.returncode}): {done.stderr.strip()}")
    jobs = {}
    for line in done.stdout.splitlines():
        job, state, reason = (line.strip().split("|") + ["", ""])[:3]
        jobs[job] = (state, reason)
    return jobs


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def last_error(log: Path | None) -> str:
    """The last error line of a job's log: our one-line errors (``error: ...``), else DVC's or SLURM's
    (``ERROR: ...``, ``slurmstepd: error: *** JOB ... DUE TO TIME LIMIT ***``)."""
    try:
        lines = log.read_text(errors="replace").splitlines() if log else []
    except FileNotFoundError:
        return ""
    ours = [line.strip() for line in lines if line.startswith("error:")]
    theirs = [line.strip() for line in lines if line.startswith(("ERROR:", "slurmstepd"))]
    return (ours or theirs or [""])[-1]


def point_status(place: Place, name: str, refs: dict[str, str], queue: dict[str, tuple[str, str]]) -> PointStatus:
    if name in refs:
        return PointStatus(name, "done")
    record = read_json(place.point(name, "json"))
    if record is None:
        return PointStatus(name, "missing", detail="not submitted")
    job, log = record["job"], Path(record["log"])
    state, reason = queue.get(job, ("", ""))
    if state in ACTIVE:
        waiting = f"waiting for its prepare job {record['prepare']}" if reason == "Dependency" else reason
        return PointStatus(name, ACTIVE[state], job, log, "" if waiting in ("None", "") else waiting)
    result = read_json(place.point(name, "result.json"))
    if result is not None and result["job"] == job:
        if result["status"] == "done":  # its experiment went back, then the ref went away (dvc exp remove)
            return PointStatus(
                name, "missing", job, log, "finished, but its experiment is no longer in this repository"
            )
        return PointStatus(name, "failed", job, log, last_error(log) or result["message"])
    key = record.get("prepare_key")
    prepared = read_json(place.prepare(key, "result.json")) if key else None
    if prepared and prepared["status"] == "failed" and not log.exists():  # it never started
        prep_log = (read_json(place.prepare(key, "json")) or {}).get("log")
        detail = f"its prepare job {prepared['job']} failed: {prepared['message']}"
        return PointStatus(name, "failed", job, Path(prep_log) if prep_log else None, detail)
    ended = f"{state or 'no longer known to SLURM'}" + (f", {reason}" if reason not in ("", "None") else "")
    return PointStatus(name, "failed", job, log, last_error(log) or f"the job ended without a result ({ended})")


def status(repo: Path, study: Study) -> list[PointStatus]:
    """Every point of the study: done (its experiment is in the repository), queued or running
    (SLURM says so), failed (its job reported a failure or ended without a result), or missing."""
    place, refs = Place(repo, study.name), experiment_refs(repo)
    queue = squeue() if any(place.point(p.name, "json").exists() for p in study.points()) else {}
    return [point_status(place, p.name, refs, queue) for p in study.points()]


def status_report(statuses: list[PointStatus], study: Study) -> str:
    counts = defaultdict(int)
    for s in statuses:
        counts[s.state] += 1
    order = ("done", "running", "queued", "failed", "missing")
    lines = [
        f"study {study.name}: {len(statuses)} points: " + ", ".join(f"{counts[k]} {k}" for k in order if counts[k])
    ]
    width = max((len(s.name) for s in statuses), default=0)
    for s in statuses:
        line = f"  {s.state:<8} {s.name:<{width}}"
        if s.job:
            line += f"  job {s.job}"
        if s.log and s.state != "done":
            line += f"  log: {s.log}"
        if s.detail:
            line += f"  ({s.detail})"
        lines.append(line)
    return "\n".join(lines)


def wait(repo: Path, study: Study, poll_s: float = POLL_S) -> list[PointStatus]:
    """Until no point is queued or running; prints each point's state as it changes."""
    seen: dict[str, str] = {}
    while True:
        statuses = status(repo, study)
        for s in statuses:
            if seen.get(s.name) != s.state:
                print(f"  {s.state:<8} {s.name}" + (f"  log: {s.log}" if s.state == "failed" else ""), flush=True)
                seen[s.name] = s.state
        if not any(s.state in ("queued", "running") for s in statuses):
            return statuses
        time.sleep(poll_s)


# ---------------------------------------------------------------------------------------
# Submission
def check_ready(repo: Path) -> None:
    """What a cluster study needs before anything is submitted: a commit that is the working tree,
    an MLflow tracking server, and SLURM's commands."""
    changed = uncommitted(repo)
    if changed:
        listing = ", ".join(changed[:10]) + (f" and {len(changed) - 10} more" if len(changed) > 10 else "")
        raise SlurmError(
            f"{repo} has uncommitted changes: {listing}. The points run the commit (HEAD) in clones of the "
            f"repository: commit these first (or stash them, or add them to .gitignore)"
        )
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri.split(":", 1)[0] not in ("http", "https"):
        what = f"MLFLOW_TRACKING_URI is {redact(uri)}" if uri else "MLFLOW_TRACKING_URI is not set"
        raise SlurmError(
            f"{what}: --executor slurm needs an MLflow tracking server, which every job reaches (a SQLite "
            f"database on a network file system breaks under jobs writing at once). Start one on the login node, "
            f"e.g. `mlflow server --host $(hostname) --port 5000 --backend-store-uri sqlite:///$HOME/mlflow.db "
            f"--workers 1 &`, then `export MLFLOW_TRACKING_URI=http://$(hostname):5000` (README: studies on a "
            f"SLURM cluster)"
        )
    if shutil.which("sbatch") is None:
        raise SlurmError(
            "sbatch not found: --executor slurm submits from a machine with the SLURM client commands (a login node)"
        )


def point_params(base: dict[str, Any], point: Point, where: str) -> dict[str, Any]:
    params = json.loads(json.dumps(base))
    for key, value in point.overrides.items():
        set_dotted(params, key, value)
    return validate(params, where=f"{where} (point {point.name})")


def digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def prepare_input(commit: str, params: dict[str, Any]) -> tuple[str, str]:
    """Keys of what the download stage and the prepare stage read (at this commit)."""
    values = {}
    for entry in PREPARE_KEYS:
        section, _, key = entry.partition(".")
        values[entry] = params[section][key] if key else params[section]
    return digest(commit, values["data"]), digest(commit, values)


def executor(place: Place, study: Study, options: ClusterOptions, res: Resources, after: str | None, array: int):
    """A submitit executor for jobs of ``res`` that wait for job ``after``."""
    import submitit

    sbatch: dict[str, Any] = {**dict(options.sbatch), "requeue": True, "kill-on-invalid-dep": "yes"}
    if after:
        sbatch["dependency"] = f"afterok:{after}"
    if res.mem_mb_per_node:
        sbatch["mem"] = f"{res.mem_mb_per_node}M"
    limits: dict[str, Any] = {"cpus_per_task": res.cpus_per_task, "gpus_per_node": res.gpus_per_node or None}
    ex = submitit.SlurmExecutor(
        folder=place.jobs, max_num_timeout=UNLIMITED if options.max_requeues is None else options.max_requeues
    )
    ex.update_parameters(
        job_name=study.name,
        partition=options.partition,
        time=options.time_min,
        nodes=res.nodes,
        ntasks_per_node=res.tasks_per_node,
        signal_delay_s=options.signal_delay_s,
        array_parallelism=options.max_running or array,
        stderr_to_stdout=True,
        use_srun=False,  # the job runs in the batch step; the training starts its own step
        wckey=None,
        setup=list(options.setup),
        additional_parameters=sbatch,
        **{k: v for k, v in limits.items() if v is not None},
    )
    return ex


Checked = dict[str, tuple[Point, Resources, dict[str, Any]]]  # point name -> (point, resources, params)


def check(repo: Path, study: Study, options: ClusterOptions) -> Checked:
    """Every point's params and resources, and the repository's readiness: a contradiction or an
    unready repository refuses the whole study before anything is submitted."""
    base = load_params(repo / "params.yaml")
    checked = {}
    for point in study.points():
        params = point_params(base, point, str(study.path))
        checked[point.name] = (point, resources(point.name, params["trainer"], options), params)
    check_ready(repo)
    return checked


def submit(repo: Path, study: Study, options: ClusterOptions, checked: Checked) -> list[PointStatus]:
    """Submit the study's points that are missing or failed (the others are done, queued or
    running). ``checked`` is :func:`check`'s answer: every check comes first, so that a refused
    study submits nothing."""
    place, commit, cache = Place(repo, study.name), head(repo), cache_dir(repo)
    todo = [s.name for s in status(repo, study) if s.state in ("missing", "failed")]
    if not todo:
        print(f"study {study.name}: every point is done, queued or running; nothing to submit")
        return status(repo, study)
    plans = [(point, res, *prepare_input(commit, params)) for point, res, params in map(checked.get, todo)]
    queue = squeue()
    prepared: dict[str, str | None] = {}  # prepare key -> the job to wait for (None: done before)
    data_jobs: dict[str, str] = {}  # data key -> a prepare job submitted now (the next one with that data waits)
    for point, _, data_key, key in plans:
        if key not in prepared:
            prepared[key] = _prepare(
                place, study, options, commit, str(cache), point, key, queue, data_jobs.get(data_key)
            )
            if prepared[key]:
                data_jobs[data_key] = prepared[key]
    groups: dict[tuple[Resources, str], list[Point]] = defaultdict(list)
    for point, res, _, key in plans:
        groups[(res, key)].append(point)
    for (res, key), group in groups.items():
        ex = executor(place, study, options, res, prepared[key], len(group))
        with ex.batch():
            jobs = [ex.submit(_point_job(place, commit, str(cache), p)) for p in group]
        for point, job in zip(group, jobs):
            record = {"job": job.job_id, "log": str(job.paths.stdout), "commit": commit, "prepare": prepared[key],
                      "prepare_key": key, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}  # fmt: skip
            write_text_atomic(place.point(point.name, "json"), json.dumps(record, indent=2) + "\n")
            print(
                f"submitted {point.name}: job {job.job_id}"
                + (f", after prepare job {prepared[key]}" if prepared[key] else "")
            )
    return status(repo, study)


def _point_job(place: Place, commit: str, cache: str, point: Point) -> PointJob:
    return PointJob(
        repo=str(place.repo),
        commit=commit,
        cache=cache,
        name=point.name,
        overrides=dict(point.overrides),
        clone=str(place.clone(point.name)),
        result=str(place.point(point.name, "result.json")),
        note=str(place.point(point.name, "stopped")),
    )


def _prepare(
    place: Place, study: Study, options: ClusterOptions, commit: str, cache: str, point: Point, key: str,
    queue: dict[str, tuple[str, str]], after: str | None,
) -> str | None:  # fmt: skip
    """The prepare job the points with prepare input ``key`` wait for: none when one finished
    before, the one still queued or running, or a new one (after ``after``, which downloads the same data)."""
    record, result = read_json(place.prepare(key, "json")), read_json(place.prepare(key, "result.json"))
    if record and result and result["job"] == record["job"] and result["status"] == "done":
        return None
    if record and queue.get(record["job"], ("",))[0] in ACTIVE:
        return record["job"]
    res = Resources(
        nodes=1, tasks_per_node=1, gpus_per_node=0, cpus_per_task=options.cpus, mem_mb_per_node=options.mem_mb
    )
    ex = executor(place, study, options, res, after, 1)
    ex.update_parameters(job_name=f"{study.name}-prepare")
    job = ex.submit(
        PrepareJob(
            repo=str(place.repo),
            commit=commit,
            cache=cache,
            overrides=dict(point.overrides),
            clone=str(place.prepare_clone(key)),
            result=str(place.prepare(key, "result.json")),
        )
    )
    record = {
        "job": job.job_id,
        "log": str(job.paths.stdout),
        "commit": commit,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_text_atomic(place.prepare(key, "json"), json.dumps(record, indent=2) + "\n")
    print(f"submitted download + prepare for {point.name} and the points that share its data: job {job.job_id}")
    return job.job_id
