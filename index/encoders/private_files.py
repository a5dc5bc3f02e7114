"""Owner-only cache files: directories 0700, files 0600, every file published atomically."""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from .child_process import ChildJobStopped

DIR_MODE = 0o700
FILE_MODE = 0o600
LOCK_POLL_S = 0.1


def private_dirs(root: Path, *parts: str) -> Path:
    """`root/parts...`: every level this call creates, and the last one, set to 0700.

    A level that already existed above the last one (a home directory given as the cache root)
    keeps its mode: that directory is the user's, not ours.
    """
    levels = [root]
    for part in parts:
        levels.append(levels[-1] / part)
    for level in levels:
        try:
            level.mkdir(mode=DIR_MODE, parents=True)
        except FileExistsError:
            continue
        os.chmod(level, DIR_MODE)  # mkdir's mode is filtered by the umask
    os.chmod(levels[-1], DIR_MODE)
    return levels[-1]


@contextlib.contextmanager
def staged_file(final: Path) -> Iterator[Path]:
    """A 0600 temporary path beside `final`; renamed over it only if the block succeeds."""
    fd, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    os.close(fd)
    staged = Path(name)
    try:
        yield staged
        os.chmod(staged, FILE_MODE)
        with staged.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(staged, final)
    finally:
        staged.unlink(missing_ok=True)


def write_private_file(final: Path, data: bytes) -> None:
    """Write `data` to `final` atomically with mode 0600."""
    with staged_file(final) as staged:
        staged.write_bytes(data)


@contextlib.contextmanager
def exclusive_lock(lock_file: Path, stop: threading.Event | None = None) -> Iterator[None]:
    """Hold an advisory lock so two processes never export into one cache folder at once.

    With `stop`, the wait for the lock polls it and raises ChildJobStopped once it is set."""
    try:
        import fcntl
    except ImportError:  # Windows: atomic renames still keep every published file whole.
        yield
        return
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if stop is not None else 0))
                break
            except BlockingIOError:
                if stop is not None and stop.wait(LOCK_POLL_S):
                    raise ChildJobStopped(f"stopped while waiting for {lock_file}") from None
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
