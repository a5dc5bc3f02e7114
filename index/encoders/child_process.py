"""Run one heavy job in a spawned child process that the caller can stop.

Why a process: the ONNX export imports torch, traces the model and quantises it, about 15 s of
mostly GIL-holding Python on two cores. Run on a thread of the language server, it stalled the
server's event loop for up to 0.4 s at a time and left torch (1 GB) in its memory; a thread also
cannot be stopped, so a server asked to shut down mid-export waited for it to finish and the
editor killed it. A child shares no GIL with the server, returns its memory when it exits, and
is terminated when the caller's stop event is set.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from .threads import lower_current_thread_priority

POLL_S = 0.1
TERMINATE_GRACE_S = 5.0


class ChildJobStopped(Exception):
    """The caller's stop event was set; the child was terminated and its work is discarded."""


class ChildJobFailed(RuntimeError):
    """The job raised in the child (its type and message are kept) or the child died."""


def _child_main(
    sender: Connection, job: Callable[..., None], args: tuple[Any, ...], low_priority: bool
) -> None:
    if low_priority:
        lower_current_thread_priority()  # threads made from here on inherit it
    try:
        job(*args)
    except BaseException as exc:  # reported to the parent, which raises it there
        sender.send(f"{type(exc).__name__}: {exc}")
        raise
    sender.send(None)


def run_in_child(
    job: Callable[..., None],
    args: tuple[Any, ...],
    *,
    name: str,
    stop: threading.Event | None = None,
    low_priority: bool = False,
) -> None:
    """Run `job(*args)` in a spawned process and wait; `job` and `args` must pickle.

    Raises ChildJobStopped when `stop` is set first, ChildJobFailed when the job raises or the
    child dies without reporting."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(
        target=_child_main, args=(sender, job, args, low_priority), name=name, daemon=True
    )
    child.start()
    sender.close()
    reported = False
    try:
        while not receiver.poll(POLL_S):
            if stop is not None and stop.is_set():
                raise ChildJobStopped(f"{name} was stopped")
            if not child.is_alive() and not receiver.poll():
                raise ChildJobFailed(f"{name} died with exit code {child.exitcode}")
        try:
            outcome = receiver.recv()
        except EOFError:
            child.join()
            raise ChildJobFailed(f"{name} died with exit code {child.exitcode}") from None
        reported = True
    finally:
        receiver.close()
        _end(child, exiting=reported)
    if outcome is not None:
        raise ChildJobFailed(f"{name} failed: {outcome}")


def _end(child: multiprocessing.process.BaseProcess, exiting: bool) -> None:
    """Let a child that has reported exit; terminate one that has not (then kill it)."""
    if exiting:
        child.join(TERMINATE_GRACE_S)
    if child.is_alive():
        child.terminate()
        child.join(TERMINATE_GRACE_S)
    if child.is_alive():
        child.kill()
    child.join()
