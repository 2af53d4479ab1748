"""Worker processes that share the machine's cores (prepare decodes tracks, evaluate scores them).

Workers are spawned, not forked: a fork of a process whose torch (OpenMP) threads have run can
hang in the child's first parallel region, and CUDA cannot start in a forked child at all. Each
gets its share of the cores in torch and in numpy's BLAS (with all cores each, ``jobs`` workers
would oversubscribe the machine), and exits when its parent dies: the workers of a stage killed
with SIGKILL (no shutdown) would otherwise wait for tasks forever.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def cores() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pool(jobs: int, initializer: Callable[..., None] | None = None, initargs: tuple = ()) -> ProcessPoolExecutor:
    """``jobs`` spawned worker processes, each with ``cores() // jobs`` threads (at least one)."""
    threads = max(1, cores() // jobs)
    return ProcessPoolExecutor(
        jobs, multiprocessing.get_context("spawn"), initializer=_start, initargs=(threads, initializer, initargs)
    )


def _start(threads: int, initializer: Callable[..., None] | None, initargs: tuple[Any, ...]) -> None:
    import threadpoolctl
    import torch

    torch.set_num_threads(threads)
    threadpoolctl.threadpool_limits(threads)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    if initializer is not None:
        initializer(*initargs)


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(1)
