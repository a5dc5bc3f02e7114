"""A real OpenAI-style HTTP server on 127.0.0.1 that can misbehave on request."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

API_KEY = "sk-test-secret-key-123"


@dataclass
class FakeModelServer:
    owned_by: str = "vllm"
    tokenize_routes: set[str] = field(default_factory=lambda: {"/tokenize"})
    requests: list[tuple[str, dict[str, str], Any]] = field(default_factory=list)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/tokenize", self.tokenize)
        app.router.add_post("/extras/tokenize", self.tokenize)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.completions)
        return app

    async def _authorized(self, request: web.Request) -> Any:
        body = await request.json() if request.can_read_body else None
        self.requests.append((request.path, dict(request.headers), body))
        if request.headers.get("Authorization") != f"Bearer {API_KEY}":
            raise web.HTTPUnauthorized(
                text=json.dumps({"error": {"message": "invalid api key"}}),
                content_type="application/json",
            )
        return body

    async def models(self, request: web.Request) -> web.Response:
        await self._authorized(request)
        return web.json_response(
            {"object": "list", "data": [{"id": "m", "object": "model", "owned_by": self.owned_by}]}
        )

    async def tokenize(self, request: web.Request) -> web.Response:
        body = await self._authorized(request)
        if request.path not in self.tokenize_routes:
            raise web.HTTPNotFound()
        text = body.get("prompt") if request.path == "/tokenize" else body.get("input")
        if not isinstance(text, str):
            raise web.HTTPUnprocessableEntity()
        return web.json_response({"tokens": [ord(c) for c in text]})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._authorized(request)
        chat = request.path.endswith("chat/completions")
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        if prompt == "fail":
            return web.json_response({"error": {"message": "engine exploded"}}, status=500)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)

        def event(text: str) -> bytes:
            choice = {"index": 0, "delta": {"content": text}} if chat else {"text": text}
            return f"data: {json.dumps({'choices': [choice]})}\n\n".encode()

        if prompt == "ok":
            for piece in ("Hel", "lo", " world"):
                await response.write(event(piece))
            await response.write(b'data: {"choices": [], "usage": {"completion_tokens": 3}}\n\n')
            await response.write(b"data: [DONE]\n\n")
        elif prompt == "stall":
            await response.write(event("a"))
            await asyncio.sleep(30)
        elif prompt == "cut":
            await response.write(event("a"))
            assert request.transport is not None
            request.transport.close()
        elif prompt == "nodone":
            await response.write(event("a"))
        elif prompt == "malformed":
            await response.write(b"data: {not json\n\n")
        elif prompt == "error-event":
            await response.write(b'data: {"error": {"message": "bad stop", "code": 400}}\n\n')
        elif prompt == "endless":
            finished = False
            try:
                for _ in range(1000):
                    await response.write(event("x"))
                    await asyncio.sleep(0.02)
                finished = True
            finally:
                if not finished:
                    self.disconnected.set()
        await response.write_eof()
        return response


async def _start(
    server: FakeModelServer, ssl_context: ssl.SSLContext | None = None
) -> web.AppRunner:
    runner = web.AppRunner(server.app(), handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    server.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
    return runner


@pytest.fixture
async def model_server() -> AsyncIterator[FakeModelServer]:
    server = FakeModelServer()
    runner = await _start(server)
    yield server
    await runner.cleanup()


@pytest.fixture
async def start_server() -> AsyncIterator[Callable[..., Awaitable[FakeModelServer]]]:
    """Start more servers: `await start_server(owned_by=..., ssl_context=...)`."""
    runners: list[web.AppRunner] = []

    async def start(ssl_context: ssl.SSLContext | None = None, **options: Any) -> FakeModelServer:
        server = FakeModelServer(**options)
        runners.append(await _start(server, ssl_context))
        return server

    yield start
    for runner in runners:
        await runner.cleanup()
