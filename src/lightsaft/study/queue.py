"""The local executor: a study's points through DVC's own experiment queue on this machine, and
one experiment in the foreground (the demo).
"""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path

from ..errors import redact
from .experiments import dvc, experiment_refs, set_args
from .studies import Point

QUEUE_POLL_S = 5.0
STALL_RESTART_S = 60.0

# DVC fills an experiment's temporary copy with the outputs dvc.lock records, and warns for each
# one it has no copy of: on a first run, every output. Nothing is wrong (the stage then runs and
# makes it), so the demo keeps these lines from the user.
HARMLESS = re.compile(r"WARNING: No file hash info found for '.*'\. It won't be created\.")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # colours: DVC writes WARNING in yellow on a terminal


def run_foreground(repo: Path, point: Point) -> int:
    """One experiment in a temporary copy, its output streamed to the terminal (the demo)."""
    args = ["exp", "run", "--temp", "-n", point.name, *set_args(point.overrides)]
    print(redact(f"$ dvc {' '.join(args)}"), flush=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return stream_filtered([sys.executable, "-m", "dvc", *args], repo, env, HARMLESS)


def stream_filtered(cmd: list[str], cwd: Path, env: dict[str, str], drop: re.Pattern) -> int:
    """Run ``cmd`` with its output passed through, less the lines ``drop`` matches. On a terminal the
    command gets a pseudo-terminal of its own, so that its progress bars still draw."""
    terminal = sys.stdout.isatty()
    master, slave = pty.openpty() if terminal else os.pipe()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    pending = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # a pseudo-terminal whose other side closed
            chunk = b""
        if not chunk:
            break
        pending += chunk
        *lines, pending = re.split(rb"(?<=\n)|(?<=\r)(?=[^\r\n])", pending)  # ends at \n, \r\n, \r\r\n or \r
        kept = b"".join(line for line in lines if not drop.search(ANSI.sub("", line.decode(errors="replace"))))
        sys.stdout.buffer.write(kept)
        sys.stdout.flush()
    sys.stdout.buffer.write(pending)
    os.close(master)
    return proc.wait()


def queue_status(repo: Path) -> tuple[dict[str, str], int]:
    """``dvc queue status`` parsed: name -> status, and the number of active workers."""
    text = dvc(repo, "queue", "status", check=False).stdout
    statuses, workers = {}, 0
    for line in text.splitlines():
        cols = line.split()
        if line.startswith("Worker status:"):
            workers = int(re.search(r"(\d+) active", line).group(1))
        elif len(cols) >= 4 and cols[0] != "Task":
            statuses[cols[1]] = cols[-1]
    return statuses, workers


def run_queue(repo: Path, points: list[Point], jobs: int, log_dir: Path) -> dict[str, str]:
    """Queue the points that have no finished experiment yet, run them with ``jobs`` workers,
    and return name -> Success/Failed/Skipped, with each point's log under ``log_dir``."""
    done = experiment_refs(repo)
    results = {p.name: "Skipped (already done)" for p in points if p.name in done}
    todo = [p for p in points if p.name not in done]
    for point in todo:
        dvc(repo, "queue", "remove", point.name, check=False)  # a failed earlier try of this point
        dvc(repo, "exp", "run", "--queue", "-n", point.name, *set_args(point.overrides))
        print(f"queued {point.name}", flush=True)
    if todo:
        dvc(repo, "queue", "start", "-j", str(jobs))
    pending, idle_since = {p.name for p in todo}, time.monotonic()
    while pending:
        time.sleep(QUEUE_POLL_S)
        statuses, workers = queue_status(repo)
        for name in sorted(pending):
            if statuses.get(name) in ("Success", "Failed"):
                pending.discard(name)
                results[name] = statuses[name]
                print(f"{name}: {statuses[name]}", flush=True)
            elif name not in statuses:
                pending.discard(name)
                results[name] = "Success" if name in experiment_refs(repo) else "Failed (lost by the queue)"
        if pending and workers == 0:
            if time.monotonic() - idle_since > STALL_RESTART_S:  # DVC's workers can stop early
                print("queue stalled with tasks left; restarting workers", flush=True)
                dvc(repo, "queue", "start", "-j", str(jobs), check=False)
                idle_since = time.monotonic()
        else:
            idle_since = time.monotonic()
    log_dir.mkdir(parents=True, exist_ok=True)
    for point in todo:
        log = dvc(repo, "queue", "logs", point.name, check=False)
        (log_dir / f"{point.name}.log").write_text(log.stdout + log.stderr)
    return results
