"""The CPU-heavy half of a build: read, hash, check, chunk and tokenize files, in parallel.

The main process decides which files need work (by stat) and writes the results; this module turns
one file into the rows to write. With many files the work runs in a pool of worker processes
(spawned, so a language server's threads are never forked) and comes back in submission order, so
chunk ids are assigned in the same order as a serial build would assign them.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from .chunker import ChunkLimits, chunk_file
from .discovery import decode_or_skip
from .lexical import document_tokens
from .store import FileRecord, FileRows

log = logging.getLogger(__name__)

# Below this many files a pool costs more to start (~0.3 s) than it saves.
PARALLEL_MIN_FILES = 200
# Files per task: big enough to amortise the pickling round trip, small enough to balance.
BATCH_FILES = 24
MAX_WORKERS = 8
# Batches queued per worker: enough that workers never idle while the writer is busy.
IN_FLIGHT_PER_WORKER = 8


class BuildStopped(Exception):
    """The build was asked to stop (a language server shutting down, say); nothing was kept."""


@dataclass(frozen=True)
class FileJob:
    """One file whose stat changed: where it is and the content hash stored for it, if any."""

    key: str
    root: int
    relpath: str
    path: str
    mtime_ns: int
    previous_sha256: str | None


@dataclass(frozen=True)
class PreparedFile:
    """What to write for one file: its rows, or why there are none.

    `rows is None and skip_reason is None` means the content is what is stored already.
    """

    key: str
    sha256: str
    mtime_ns: int
    rows: FileRows | None = None
    skip_reason: str | None = None


def file_record(
    root: int, relpath: str, data: bytes, digest: str, mtime_ns: int, limits: ChunkLimits
) -> FileRecord | str:
    """A fresh record for one file's content, or the reason it is skipped."""
    text, reason = decode_or_skip(data)
    if reason is not None:
        return reason
    try:
        chunked = chunk_file(relpath, text, limits)
    except (ValueError, RecursionError) as exc:  # a grammar that chokes: fall back to text
        log.warning("chunking %s failed (%s); using line windows", relpath, exc)
        chunked = chunk_file(relpath + ".txt", text, limits)
    return FileRecord(
        root=root,
        relpath=relpath,
        sha256=digest,
        size=len(data),
        mtime_ns=mtime_ns,
        language=chunked.language,
        chunks=chunked.chunks,
        symbols=chunked.symbols,
    )


def prepare(job: FileJob, limits: ChunkLimits) -> PreparedFile:
    """Read, hash and (when the content is new) chunk and tokenize one file."""
    try:
        data = Path(job.path).read_bytes()
    except OSError as exc:
        return PreparedFile(job.key, "", job.mtime_ns, skip_reason=f"unreadable ({exc.strerror})")
    digest = hashlib.sha256(data).hexdigest()
    if digest == job.previous_sha256:
        return PreparedFile(job.key, digest, job.mtime_ns)
    record = file_record(job.root, job.relpath, data, digest, job.mtime_ns, limits)
    if isinstance(record, str):
        return PreparedFile(job.key, digest, job.mtime_ns, skip_reason=record)
    tokens = [document_tokens(job.key, chunk.text) for chunk in record.chunks]
    return PreparedFile(job.key, digest, job.mtime_ns, FileRows.of(record, tokens))


Preparer = Callable[[FileJob, Any], PreparedFile]


def _prepare_batch(jobs: list[FileJob], limits: Any, preparer: Preparer) -> list[PreparedFile]:
    return [preparer(job, limits) for job in jobs]


def default_workers() -> int:
    """One worker per CPU this process may run on, at most MAX_WORKERS."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_WORKERS))


def prepare_all(
    jobs: list[FileJob],
    limits: Any,
    workers: int,
    preparer: Preparer = prepare,
    stop: threading.Event | None = None,
) -> Iterator[PreparedFile]:
    """Every job's result, in job order; in worker processes when there are enough jobs.

    `preparer` (a module-level function, to cross into the workers) turns one job into rows;
    by default the full chunker with `limits`. Setting `stop` ends it with `BuildStopped`
    before the next result, and the pool's queued batches are cancelled."""
    with closing(_prepare_in_order(jobs, limits, workers, preparer)) as results:
        for prepared in results:
            if stop is not None and stop.is_set():
                raise BuildStopped("the index build was stopped")
            yield prepared


def _prepare_in_order(
    jobs: list[FileJob], limits: Any, workers: int, preparer: Preparer
) -> Generator[PreparedFile, None, None]:
    if workers <= 1 or len(jobs) < PARALLEL_MIN_FILES:
        for job in jobs:
            yield preparer(job, limits)
        return
    batches = iter([jobs[i : i + BATCH_FILES] for i in range(0, len(jobs), BATCH_FILES)])
    yielded = 0
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        # A bounded window of batches in flight keeps memory flat when writing is the slower half.
        pending: deque[Future[list[PreparedFile]]] = deque(
            pool.submit(_prepare_batch, batch, limits, preparer)
            for batch in islice(batches, workers * IN_FLIGHT_PER_WORKER)
        )
        while pending:
            done = pending.popleft().result()
            following = next(batches, None)
            if following is not None:
                pending.append(pool.submit(_prepare_batch, following, limits, preparer))
            for prepared in done:
                yielded += 1
                yield prepared
    except BrokenProcessPool as exc:
        # A worker died (killed, out of memory, or a main script without a __main__ guard that
        # re-runs itself under "spawn"): finish in this process rather than fail the build.
        log.warning("index workers failed (%s); continuing in one process", exc)
        for job in jobs[yielded:]:
            yield preparer(job, limits)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
