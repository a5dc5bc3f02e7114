"""A proxied request leaves nothing behind for Python's cycle collector.

What refcounting cannot free waits for a collection, and under load a collection of a few
thousand requests' leftovers paused the proxy for 6-12 ms, every 0.7 s. So the whole proxy (the
server, every layer, the audit store) runs here in this process, in front of a model server in
another (`benchmarks/instant_upstream.py`), and the collector is asked what the requests left.
"""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from audit_proxy.app import build_app
from audit_proxy.config import load_config
from audit_proxy.http_server import HttpServer
from bastion.stack import free_port
from benchmarks.lsp_session import instant_upstream

from .conftest import serving

REQUESTS = 200
SIZED = json.dumps({"model": "instant", "messages": [{"role": "user", "content": "hi"}]})
STREAMED = json.dumps(
    {"model": "instant", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
)


@pytest.fixture
async def proxy_here(tmp_path: Path) -> AsyncIterator[tuple[int, str]]:
    """The proxy serving in this process, in front of the instant upstream: (port, a key)."""
    async with instant_upstream() as upstream:
        app = build_app(load_config(None, {"data_dir": tmp_path, "upstream_url": upstream}, {}))
        key = app.keys.create("alice")
        server = HttpServer(app, "127.0.0.1", free_port(), graceful_s=1, activity=app.activity)
        task = await serving(server)
        yield server.port, key
        server.stop()
        await asyncio.wait_for(task, 10)


async def chat(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, key: str, body: str
) -> bytes:
    """One chat request on a kept-alive connection; the answer's head and body."""
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"x-bastion-feature: chat\r\nauthorization: Bearer %s\r\ncontent-length: %d\r\n\r\n%s"
        % (key.encode(), len(body), body.encode())
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    if b"transfer-encoding: chunked" in head.lower():
        return head + await reader.readuntil(b"\r\n0\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.lower().split(b"\r\n")
        if line.startswith(b"content-length:")
    )
    return head + await reader.readexactly(length)


@pytest.mark.parametrize("body", [SIZED, STREAMED], ids=["sized", "streamed"])
async def test_proxied_requests_leave_no_garbage_for_the_collector(
    proxy_here: tuple[int, str], body: str
) -> None:
    port, key = proxy_here
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(20):  # the first requests open the upstream pool and the staging file
        await chat(reader, writer, key, body)
    gc.collect()
    gc.disable()
    try:
        for _ in range(REQUESTS):
            await chat(reader, writer, key, body)
        await asyncio.sleep(0.1)  # the last outcome's work after the answer
        unreachable = gc.collect()
    finally:
        gc.enable()
    writer.close()
    # Before, each request left its exchange and scope in a cycle: some 18 objects apiece.
    assert unreachable < REQUESTS / 10, f"{unreachable} objects left for the collector"
