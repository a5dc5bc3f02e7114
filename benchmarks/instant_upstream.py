"""An OpenAI-compatible upstream that answers at once, for overhead benchmarks.

It serves `/v1/models`, llama.cpp's `/extras/tokenize` (a word count, which is all a benchmark
needs), and streamed `/v1/completions` and `/v1/chat/completions` with a fixed short answer.
"""

from __future__ import annotations

import json
import time

from aiohttp import web

MODEL = "instant"
ANSWER = ["return ", "value", "\n"]


def _chunk(obj: str, delta: dict[str, object]) -> bytes:
    payload = {"id": "x", "object": obj, "created": int(time.time()), "model": MODEL,
               "choices": [{"index": 0, "finish_reason": None, **delta}]}  # fmt: skip
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


async def _models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})


async def _tokenize(request: web.Request) -> web.Response:
    body = await request.json()
    return web.json_response({"tokens": list(range(len(str(body.get("input", "")).split())))})


async def _stream(request: web.Request) -> web.StreamResponse:
    chat = request.path.endswith("/chat/completions")
    await request.read()
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for piece in ANSWER:
        if chat:
            await response.write(_chunk("chat.completion.chunk", {"delta": {"content": piece}}))
        else:
            await response.write(_chunk("text_completion", {"text": piece}))
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/v1/models", _models)
    app.router.add_post("/extras/tokenize", _tokenize)
    app.router.add_post("/v1/completions", _stream)
    app.router.add_post("/v1/chat/completions", _stream)
    return app


async def start(port: int) -> web.AppRunner:
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


if __name__ == "__main__":
    import sys

    web.run_app(make_app(), host="127.0.0.1", port=int(sys.argv[1]), access_log=None,
                print=None)  # fmt: skip
