"""A real `bastion proxy` process in front of a recording fake model server, per test module."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from audit_proxy.http_server import HttpServer
from audit_proxy.keys import KeyStore
from audit_proxy.store import AuditStore
from bastion.stack import free_port

from .fake_upstream import FakeUpstream
from .pki import Authority, Issued

SERVICE_KEY = "svc-secret-0123456789"
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Proxy:
    url: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def store(self) -> AuditStore:
        return AuditStore(self.data_dir / "audit.sqlite3")

    def keys(self) -> KeyStore:
        return KeyStore(self.data_dir / "keys.sqlite3")

    def log(self) -> str:
        return self.log_path.read_text()


def start_proxy(
    upstream_url: str,
    data_dir: Path,
    log_path: Path,
    *extra: str,
    prefix: tuple[str, ...] = (),
    wait: bool = True,
) -> Proxy:
    port = free_port()
    env = {**os.environ, "BASTION_UPSTREAM_API_KEY": SERVICE_KEY, "PYTHONPATH": str(REPO)}
    command = [
        *prefix,
        sys.executable,
        "-m",
        "bastion.proxy_commands",
        "proxy",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--upstream",
        upstream_url,
        "--data-dir",
        str(data_dir),
        *extra,
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    proxy = Proxy(f"http://127.0.0.1:{port}", data_dir, process, log_path)
    if wait:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"proxy exited with {process.returncode}:\n{proxy.log()}")
            try:
                if httpx.get(proxy.url + "/healthz", timeout=1).status_code == 200:
                    return proxy
            except httpx.TransportError:
                time.sleep(0.05)
        stop_proxy(proxy)
        raise RuntimeError(f"proxy did not come up:\n{proxy.log()}")
    return proxy


async def serving(server: HttpServer) -> asyncio.Task[None]:
    """`server` serving in a task of this loop, once it takes connections."""
    task = asyncio.create_task(server.serve())
    for _ in range(200):
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.close()
            break
        await asyncio.sleep(0.01)
    return task


def stop_proxy(proxy: Proxy) -> None:
    proxy.process.terminate()
    try:
        proxy.process.wait(10)
    except subprocess.TimeoutExpired:
        proxy.process.kill()
        proxy.process.wait(10)


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def proxy(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    root = tmp_path_factory.mktemp("proxy")
    running = start_proxy(upstream.url, root / "home" / "bastion", root / "proxy.log")
    yield running
    stop_proxy(running)


@pytest.fixture(autouse=True)
def _fresh_upstream_log(request: pytest.FixtureRequest) -> None:
    if "upstream" in request.fixturenames:
        request.getfixturevalue("upstream").clear()


@pytest.fixture(scope="module")
def user_key(proxy: Proxy) -> str:
    return proxy.keys().create("alice")


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    """A private CA for TLS collectors and the proxy's certificate for them."""
    return Authority.create(tmp_path_factory.mktemp("pki") / "ca")


@pytest.fixture(scope="module")
def proxy_cert(authority: Authority) -> Issued:
    """The proxy's client certificate, signed by `authority`."""
    return authority.issue("bastion-proxy", server=False)
