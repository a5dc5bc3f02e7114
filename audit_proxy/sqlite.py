"""Opening the proxy's private SQLite databases: owner-only files in an owner-only directory."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

BUSY_TIMEOUT_MS = 200


def prepare_data_dir(path: Path) -> None:
    """Create the data dir 0700 (parents too) and tighten it if we own it."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Another account's directory (a read-only deployment) is left alone; writes will fail loudly.
    with contextlib.suppress(PermissionError):
        os.chmod(path, 0o700)


def open_private_db(path: Path, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> sqlite3.Connection:
    """Open (creating if needed) a WAL database whose file and -wal/-shm are 0600."""
    prepare_data_dir(path.parent)
    if not path.exists():
        # SQLite gives -wal and -shm the main file's mode, so creating it 0600 covers all three.
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError, PermissionError):
            os.chmod(f"{path}{suffix}", 0o600)
    return conn
