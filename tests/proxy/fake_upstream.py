"""A recording, OpenAI-compatible model server: the test double at the proxy's upstream boundary.

It runs on its own event loop in a thread, records every request it receives, and behaves
according to the request's `model`:

- anything else: an instant answer (JSON, or a short SSE stream with usage when `stream`);
- "slow-stream": one chunk, 500 ms of silence, then the rest;
- "endless": a chunk every 50 ms for up to 10 s, noting when the connection is closed;
- "hang": no answer at all for up to 10 s, noting when the connection is closed;
- "cut": one chunk, then the connection is dropped mid-stream;
- "reject-key": 401, as a server does when the service key is wrong.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from bastion.stack import free_port

SLOW_PAUSE_S = 0.5


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    closed_by_peer: threading.Event = field(default_factory=threading.Event)
    closed_at: float | None = None

    def json(self) -> Any:
        return json.loads(self.body)


def sse(doc: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


def chunk_doc(text: str, finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "model": "fake",
        "choices": [{"index": 0, "text": text, "finish_reason": finish_reason}],
    }


USAGE = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


class FakeUpstream:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.received: list[Received] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._runner: web.AppRunner | None = None

    def start(self) -> FakeUpstream:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def clear(self) -> None:
        self.received.clear()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        self._loop.run_until_complete(site.start())
        self._ready.set()
        self._loop.run_forever()

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {name.lower(): value for name, value in request.headers.items()}
        got = Received(request.method, request.path, headers, body)
        self.received.append(got)
        if request.path == "/v1/models":
            return web.json_response(
                {"object": "list", "data": [{"id": "fake", "object": "model"}]}
            )
        if request.path == "/tokenize":
            return web.json_response({"count": 3, "max_model_len": 2048, "tokens": [1, 2, 3]})
        if request.path == "/extras/tokenize":
            return web.json_response({"tokens": [1, 2, 3]})
        doc = got.json()
        model = doc.get("model")
        if model == "reject-key":
            return web.json_response({"error": "bad key"}, status=401)
        if model == "hang":
            await self._until_closed(request, got, 10.0)
            return web.Response(status=504)
        if not doc.get("stream"):
            answer = chunk_doc("hello", "stop") | {"usage": USAGE}
            return web.json_response(answer)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(sse(chunk_doc("first ")))
        if model == "slow-stream":
            await asyncio.sleep(SLOW_PAUSE_S)
        elif model == "cut":
            await asyncio.sleep(0.05)
            assert request.transport is not None
            request.transport.abort()
            return response
        elif model == "endless":
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if await self._until_closed(request, got, 0.05):
                    return response
                try:
                    await response.write(sse(chunk_doc("more ")))
                except ConnectionError:
                    self._closed(got)
                    return response
        await response.write(sse(chunk_doc("second", "length")))
        await response.write(sse({"id": "cmpl-1", "choices": [], "usage": USAGE}))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _until_closed(self, request: web.Request, got: Received, wait_s: float) -> bool:
        """Poll the connection for up to wait_s; True (and noted) once the peer has closed it."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            transport = request.transport
            if transport is None or transport.is_closing():
                self._closed(got)
                return True
            await asyncio.sleep(0.01)
        return False

    def _closed(self, got: Received) -> None:
        if not got.closed_by_peer.is_set():
            got.closed_at = time.monotonic()
            got.closed_by_peer.set()
