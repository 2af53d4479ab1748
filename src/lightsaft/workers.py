"""Worker processes that share the machine's cores (prepare decodes tracks, evaluate scores them).

Workers are spawned, not forked: a fork of a process whose torch (OpenMP) threads have run can
hang in the child's first parallel region, and CUDA cannot start in a forked child at all. Each
gets its share of the cores in torch and in numpy's BLAS (with all cores each, ``jobs`` workers
would oversubscribe the machine), and exits when its parent dies: the workers of a stage killed
with SIGKILL (no shutdown) would otherwise wait for tasks forever. Ctrl+C is the parent's to
handle: the workers ignore SIGINT, and :func:`running` stops them at once when the parent is
interrupted, instead of letting them finish the tasks they hold.

With one job, prepare and evaluate do the work in their own process instead (a spawned worker
imports torch again, seconds per start); a pool isolates crashes only where ``jobs`` >= 2.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any


def cores() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pool(jobs: int, initializer: Callable[..., None] | None = None, initargs: tuple = ()) -> ProcessPoolExecutor:
    """``jobs`` spawned worker processes, each with ``cores() // jobs`` threads (at least one)."""
    threads = max(1, cores() // jobs)
    return ProcessPoolExecutor(
        jobs,
        multiprocessing.get_context("spawn"),
        initializer=_start,
        initargs=(threads, os.getpid(), initializer, initargs),
    )


@contextmanager
def running(
    jobs: int, initializer: Callable[..., None] | None = None, initargs: tuple = ()
) -> Iterator[ProcessPoolExecutor]:
    """:func:`pool`, shut down on leaving; on Ctrl+C, SIGTERM or an error its workers are killed
    in the middle of their tasks and the tasks not started are dropped."""
    workers = pool(jobs, initializer, initargs)
    try:
        yield workers
    except BaseException:
        terminate(workers)
        raise
    finally:
        workers.shutdown(cancel_futures=True)


def terminate(workers: ProcessPoolExecutor) -> None:
    """Kill a pool's workers now (Python 3.14 calls this ``terminate_workers()``; before it, the
    processes are only in the private ``_processes``)."""
    for process in list((workers._processes or {}).values()):
        process.terminate()


def _start(threads: int, parent: int, initializer: Callable[..., None] | None, initargs: tuple[Any, ...]) -> None:
    import threadpoolctl
    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    threadpoolctl.threadpool_limits(threads)
    # ``parent`` as the parent named itself: a parent killed while this worker was still starting
    # (importing torch takes seconds) is gone already, and os.getppid() would name the new one.
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    if initializer is not None:
        initializer(*initargs)


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(1)
