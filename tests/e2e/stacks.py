"""Real stacks for end-to-end tests: `bastion up` (real model, real proxy) in a subprocess."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bastion.stack import READY_LINE, free_port

REPO = Path(__file__).resolve().parents[2]
BASTION = [sys.executable, "-m", "bastion.cli"]


@dataclass
class Stack:
    """A running model + proxy, and what a client needs to use it."""

    proxy_url: str
    data_dir: Path
    process: subprocess.Popen[str]
    log: list[str] = field(default_factory=list)

    @property
    def user_key(self) -> str:
        return (self.data_dir / "user.key").read_text().strip()

    def audit_rows(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        connection = sqlite3.connect(f"file:{self.data_dir / 'audit.sqlite3'}?mode=ro", uri=True)
        connection.row_factory = sqlite3.Row
        try:
            return list(connection.execute(sql, args))
        finally:
            connection.close()

    def completion_records(self) -> list[sqlite3.Row]:
        """Request and outcome of each completion call, oldest first."""
        return self.audit_rows(
            "SELECT r.id, r.user, r.feature, r.route, o.status, o.completed, o.aborted_by, "
            "o.bytes_out FROM requests r LEFT JOIN outcomes o ON o.request_id = r.id "
            "WHERE r.feature = 'completion' ORDER BY r.rowid"
        )

    def request_count(self) -> int:
        return int(self.audit_rows("SELECT count(*) AS n FROM requests")[0]["n"])


def _follow(process: subprocess.Popen[str], log: list[str], ready: threading.Event) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        log.append(line)
        if READY_LINE in line:
            ready.set()


@contextmanager
def running_stack(data_dir: Path, *extra: str, timeout_s: float = 240.0) -> Iterator[Stack]:
    """Start `bastion up` with fresh ports and data; stop it at the end."""
    proxy_port, model_port = free_port(), free_port()
    process = subprocess.Popen(
        [
            *BASTION, "up",
            "--data-dir", str(data_dir),
            "--proxy-port", str(proxy_port),
            "--model-port", str(model_port),
            *extra,
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )  # fmt: skip
    stack = Stack(f"http://127.0.0.1:{proxy_port}", data_dir, process)
    ready = threading.Event()
    threading.Thread(target=_follow, args=(process, stack.log, ready), daemon=True).start()
    try:
        deadline = time.monotonic() + timeout_s
        while not ready.wait(0.2):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("bastion up did not get ready:\n" + "".join(stack.log[-60:]))
        yield stack
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
