"""A one-node SLURM cluster and an MLflow tracking server, started for the tests of studies on a
cluster (a pytest plugin: conftest.py loads it; fixtures ``slurm_cluster`` and ``mlflow_server``).

The cluster runs Debian's ``munge`` and ``slurm-wlm`` (``make slurm-deps`` installs them without
starting any service): ``munged``, ``slurmctld`` and ``slurmd`` in the foreground, as this user,
with a key, a ``slurm.conf`` and all their state in a temporary folder, on free ports. The node is
this machine; its configuration declares 8 CPUs (``SlurmdParameters=config_overrides``) so that a
prepare job, a DVC step and two training ranks fit on a 2-core machine. ``SLURM_CONF`` points at
it for the session. At the end every job is cancelled and each daemon is stopped by its PID, also
when tests failed; then a last hook flags (and kills) any daemon of a test cluster still alive,
this session's or one that an interrupted session left behind.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
from helpers import require

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "squeue", "scancel", "scontrol", "sinfo")
MARK = "lightsaft-test-slurm"  # in the path of every test cluster's files: how leftovers are found
SEARCH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])  # daemons live in sbin


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tool(name: str) -> str | None:
    return shutil.which(name, path=SEARCH)


def _leftovers() -> list[psutil.Process]:
    """Daemons of a test cluster whose session is gone (their command line names a file of a test
    cluster; their parent, the session's pytest, is no longer there). Another session's running
    cluster is left alone: it has ports and files of its own."""
    found = []
    for proc in psutil.process_iter(["pid", "name", "cmdline", "ppid"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if proc.info["name"] in DAEMONS and MARK in cmdline and not _alive(proc.info["ppid"]):
            found.append(proc)
    return found


def _alive(pid: int) -> bool:
    return pid > 1 and psutil.pid_exists(pid)


SLURM_CONF = """\
ClusterName=lightsaft-test
SlurmctldHost={host}(127.0.0.1)
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={dir}/munge.socket,cred_expire=5
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
KillWait=10
MinJobAge=3600
SlurmdParameters=config_overrides
NodeName={host} NodeAddr=127.0.0.1 CPUs=8 RealMemory=16000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""
# cred_expire: SLURM holds a requeued job back this long (120 s by default); the scheduler passes
# run every 2 s instead of 60 s. MinJobAge: ended jobs stay visible to squeue for an hour.


def _start(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "a") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in reversed(procs):  # slurmd, slurmctld, then munged
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)


STARTED: list[int] = []  # the PIDs this session started, for the last check


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A running one-node cluster; yields its folder (logs: slurmctld.log, slurmd.log, munged.log)."""
    missing = [name for name in (*DAEMONS, *CLIENTS) if _tool(name) is None]
    require(not missing, f"SLURM and munge ({', '.join(missing)} missing: `make slurm-deps`, as root)")
    old = _leftovers()
    if old:
        pytest.fail(f"daemons of an earlier test cluster are still running: {[(p.pid, p.name()) for p in old]}")
    folder = tmp_path_factory.mktemp(MARK)
    for sub in ("state", "spool"):
        (folder / sub).mkdir()
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    conf = folder / "slurm.conf"
    host = socket.gethostname().split(".")[0]
    conf.write_text(
        SLURM_CONF.format(
            host=host, user=getpass.getuser(), dir=folder, ctld_port=_free_port(), slurmd_port=_free_port()
        )
    )
    env = {**os.environ, "SLURM_CONF": str(conf), "PATH": SEARCH}
    procs: list[subprocess.Popen] = []
    try:
        munge = [_tool("munged"), "--foreground", "--force", f"--socket={folder}/munge.socket",
                 f"--key-file={key}", f"--pid-file={folder}/munged.pid", f"--log-file={folder}/munged.log",
                 f"--seed-file={folder}/munged.seed"]  # fmt: skip
        procs.append(_start(munge, folder / "munged.out", env))
        deadline = time.monotonic() + 30
        while not (folder / "munge.socket").exists():
            if procs[0].poll() is not None or time.monotonic() > deadline:
                require(False, f"munged that starts\n{(folder / 'munged.out').read_text()[-2000:]}")
            time.sleep(0.1)
        procs.append(_start([_tool("slurmctld"), "-D", "-i", "-f", str(conf)], folder / "slurmctld.out", env))
        procs.append(_start([_tool("slurmd"), "-D", "-f", str(conf)], folder / "slurmd.out", env))
        STARTED.extend(p.pid for p in procs)
        deadline = time.monotonic() + 60
        while True:
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True).stdout
            if state.strip() == "idle":
                break
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                logs = "".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(folder.glob("*.log")))
                require(False, f"a SLURM test cluster that starts (sinfo: {state.strip()!r})\n{logs}")
            time.sleep(0.5)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("SLURM_CONF", str(conf))
            mp.setenv("PATH", SEARCH)
            yield SimpleNamespace(folder=folder, conf=conf, env=env)
            subprocess.run(["scancel", "--me"], env=env, capture_output=True)
            deadline = time.monotonic() + 60
            while subprocess.run(["squeue", "-h", "--me"], env=env, capture_output=True, text=True).stdout.strip():
                if time.monotonic() > deadline:
                    break
                time.sleep(1)
    finally:
        _stop(procs)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """An MLflow tracking server on 127.0.0.1 (SQLite and artifacts in a temporary folder); yields its URI."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
           "--artifacts-destination", str(folder / "artifacts")]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    server = _start(cmd, folder / "server.log", env)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start:\n{(folder / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield uri
    finally:
        group = [server.pid]
        with contextlib.suppress(psutil.NoSuchProcess):
            group += [p.pid for p in psutil.Process(server.pid).children(recursive=True)]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)  # the server, its uvicorn worker and job runners
        _, alive = psutil.wait_procs([p for p in map(_process, group) if p], timeout=30)
        for proc in alive:
            proc.kill()


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    """After every fixture has stopped what it started: a test cluster's daemon still alive is an
    error (flagged, then killed), so that none outlives the session unnoticed."""
    alive = [p for p in map(_process, STARTED) if p and p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    alive += [p for p in _leftovers() if p.pid not in {a.pid for a in alive}]
    if not alive:
        return
    names = [f"{p.name()} (pid {p.pid})" for p in alive]
    print(f"\nerror: test cluster processes outlived the session: {', '.join(names)}; killing them", file=sys.stderr)
    for proc in alive:
        proc.kill()
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
