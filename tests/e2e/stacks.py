"""Real stacks for end-to-end tests: `bastion up` (real model, real proxy) in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit_proxy.store import AuditStore
from bastion.secrets import private_dir, write_secret
from bastion.stack import READY_LINE, free_port
from inference.launcher import embedded_model_path
from tests.fixtures.make_fim_gguf import make_qwen_fim_gguf

REPO = Path(__file__).resolve().parents[2]
BASTION = [sys.executable, "-m", "bastion.cli"]
TIERS = ["llama.cpp", "vllm"]
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
VLLM_MODELS = {
    "smollm2": REPO / ".cache" / "models" / "smollm2-135m-instruct-hf",
    "qwen-fim": REPO / ".cache" / "models" / "smollm2-qwenfim-hf",
}
VLLM_START_TIMEOUT_S = 300.0


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
        # Records are committed to the staging file first; a store files them when it opens.
        AuditStore(self.data_dir / "audit.sqlite3").close()
        connection = sqlite3.connect(f"file:{self.data_dir / 'audit.sqlite3'}?mode=ro", uri=True)
        connection.row_factory = sqlite3.Row
        try:
            return list(connection.execute(sql, args))
        finally:
            connection.close()

    def last_body(self, feature: str) -> dict[str, Any]:
        """The body the proxy forwarded for the newest `feature` request (payloads are sealed
        on disk, so it is read through the store)."""
        (row,) = self.audit_rows(
            "SELECT id FROM requests WHERE feature = ? ORDER BY rowid DESC LIMIT 1", feature
        )
        store = AuditStore(self.data_dir / "audit.sqlite3")
        try:
            body = store.payload("request", row["id"])
        finally:
            store.close()
        assert body is not None, "the newest request's payload is readable"
        document: dict[str, Any] = json.loads(body)
        return document

    def completion_records(self) -> list[sqlite3.Row]:
        """Request and outcome of each completion call, oldest first."""
        return self.audit_rows(
            "SELECT r.id, r.user, r.feature, r.route, o.status, o.completed, o.aborted_by, "
            "o.bytes_out, o.request_id AS outcome_of "
            "FROM requests r LEFT JOIN outcomes o ON o.request_id = r.id "
            "WHERE r.feature = 'completion' ORDER BY r.rowid"
        )

    def request_count(self) -> int:
        return int(self.audit_rows("SELECT count(*) AS n FROM requests")[0]["n"])


def stop_group(process: subprocess.Popen[Any], signum: signal.Signals) -> None:
    """Stop a process started in its own session, and everything it started."""
    if process.poll() is None:
        os.killpg(process.pid, signum)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


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
        stop_group(process, signal.SIGINT)


def _wait_for_http(url: str, key: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the model server exited with {process.returncode}")
        try:
            request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})  # noqa: S310
            with urllib.request.urlopen(request, timeout=2) as response:  # noqa: S310
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s")


@contextmanager
def running_vllm(model_dir: Path, key: str, log_file: Path) -> Iterator[str]:
    """Real vLLM on the CPU (`make vllm-tier` builds it), serving `model_dir` on loopback."""
    if not VLLM_PYTHON.exists() or not (model_dir / "config.json").exists():
        raise RuntimeError(f"the vLLM tier is not built ({model_dir}): run `make vllm-tier`")
    port = free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [
                str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server",
                "--model", str(model_dir),
                "--served-model-name", "smollm2",
                "--host", "127.0.0.1",
                "--port", str(port),
                "--api-key", key,
                "--max-model-len", "2048",
                "--enforce-eager",
                "--enable-prefix-caching",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            _wait_for_http(f"{url}/v1/models", key, process, VLLM_START_TIMEOUT_S)
        except RuntimeError as error:
            tail = log_file.read_text(errors="replace")[-4000:]
            raise RuntimeError(f"{error}\n{tail}") from None
        yield url
    finally:
        stop_group(process, signal.SIGTERM)


@contextmanager
def tier_stack(tier: str, folder: Path, model: str = "smollm2") -> Iterator[Stack]:
    """`bastion up` on the given tier: the embedded llama.cpp server, or real vLLM."""
    data_dir = private_dir(folder / "data")
    if tier == "llama.cpp":
        extra: tuple[str, ...] = ()
        if model == "qwen-fim":
            gguf = make_qwen_fim_gguf(embedded_model_path(), folder / "smollm2-qwen-fim.gguf")
            extra = ("--model-file", str(gguf))
        with running_stack(data_dir, *extra) as stack:
            yield stack
        return
    key_file = folder / "upstream.key"
    write_secret(key_file, "svc_vllm_" + os.urandom(16).hex())
    key = key_file.read_text().strip()
    with (
        running_vllm(VLLM_MODELS[model], key, folder / "vllm.log") as upstream,
        running_stack(
            data_dir, "--upstream", upstream, "--upstream-key-file", str(key_file)
        ) as stack,
    ):
        yield stack
