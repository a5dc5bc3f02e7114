"""Thread budgets and the low-priority worker thread that runs batch encoding.

Why a worker thread: the language server embeds the workspace in the background while the user
types. On Linux the nice value is per thread (setpriority on a thread id), and threads inherit
it from the thread that creates them, so the ONNX Runtime session (whose intra-op pool is made
when the session is made) and torch's OpenMP team (made on first use) are both created *on* the
niced worker: every thread of batch encoding runs at low priority, while the query path runs on
the caller's thread at normal priority. `os.nice()` from a thread would do the same on Linux but
is documented as process-wide, so the thread id is named explicitly. Elsewhere nothing is
lowered and only the bounded thread count keeps the encoder polite.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

# How much lower than the process the batch encoder runs (nice +10 of at most 19).
LOW_PRIORITY_NICE = 10
# A laptop has 2-16 cores; the editor, the language server and the user's build need some.
MAX_BATCH_THREADS = 4


def available_cores() -> int:
    """Cores this process may run on (the affinity mask when the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_batch_threads() -> int:
    """Intra-op threads for background batches: all cores up to 2, then half, at most 4.

    Measured on a shared 2-core machine (benchmarks/embedding_backends.py): int8 at 2 threads
    ran 1.28x of 1 thread when the cores had room and 0.99x when other work held both; as the
    batch threads run at nice +10 the second thread costs the editor little and wins when the
    laptop is idle. Past half the cores of a bigger machine the gain per thread falls while the
    user's own build and editor lose cores, hence half, and never more than 4.
    """
    cores = available_cores()
    return min(MAX_BATCH_THREADS, cores if cores <= 2 else cores // 2)


def lower_current_thread_priority() -> int | None:
    """Lower this thread's priority (Linux); the new nice value, or None where not possible."""
    if not sys.platform.startswith("linux"):
        return None
    thread_id = threading.get_native_id()
    try:
        nice = min(19, os.getpriority(os.PRIO_PROCESS, thread_id) + LOW_PRIORITY_NICE)
        os.setpriority(os.PRIO_PROCESS, thread_id, nice)
    except OSError as exc:
        log.info("embedding worker keeps normal priority: %s", exc.strerror)
        return None
    return nice


class BackgroundWorker:
    """One thread that runs every batch-encoding call, at low priority when asked."""

    def __init__(self, low_priority: bool) -> None:
        self.low_priority = low_priority
        self.native_id: int | None = None
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="bastion-embed", initializer=self._start
        )

    def _start(self) -> None:
        self.native_id = threading.get_native_id()
        if self.low_priority:
            lower_current_thread_priority()

    def call(self, function: Callable[[], T]) -> T:
        """Run `function` on the worker thread and wait for its result."""
        return self._executor.submit(function).result()

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
