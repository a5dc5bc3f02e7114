"""An OpenAI-compatible upstream that answers at once, for overhead and crash benchmarks.

It serves `/v1/models`, llama.cpp's `/extras/tokenize` (a word count, which is all a benchmark
needs), and `/v1/completions` and `/v1/chat/completions` with a fixed short answer: streamed as
SSE when the request says `"stream": true`, else one sized JSON document. It remembers the
`X-Request-Id` of every completion request it saw (the proxy sends its audit id there), and
`GET /seen-request-ids` lists them, so a crash test can match what reached it with the log.

    python benchmarks/instant_upstream.py PORT [--chunk-delay-ms MS]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from aiohttp import web

MODEL = "instant"
ANSWER = ["return ", "value", "\n"]
USAGE = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
SEEN = web.AppKey("seen", list[str])
CHUNK_DELAY_S = web.AppKey("chunk_delay_s", float)


def _chunk(obj: str, delta: dict[str, object]) -> bytes:
    payload = {"id": "x", "object": obj, "created": int(time.time()), "model": MODEL,
               "choices": [{"index": 0, "finish_reason": None, **delta}]}  # fmt: skip
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _whole(chat: bool) -> dict[str, object]:
    text = "".join(ANSWER)
    choice: dict[str, object] = {"index": 0, "finish_reason": "stop"}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return {"id": "x", "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": MODEL, "choices": [choice],
            "usage": USAGE}  # fmt: skip


async def _models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})


async def _tokenize(request: web.Request) -> web.Response:
    body = await request.json()
    return web.json_response({"tokens": list(range(len(str(body.get("input", "")).split())))})


async def _seen(request: web.Request) -> web.Response:
    return web.json_response(request.app[SEEN])


async def _complete(request: web.Request) -> web.StreamResponse:
    chat = request.path.endswith("/chat/completions")
    raw = await request.read()
    request_id = request.headers.get("X-Request-Id")
    if request_id:
        request.app[SEEN].append(request_id)
    try:
        stream = json.loads(raw).get("stream") is True
    except (ValueError, AttributeError):
        stream = False
    if not stream:
        return web.json_response(_whole(chat))
    delay = request.app[CHUNK_DELAY_S]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for piece in ANSWER:
        if chat:
            await response.write(_chunk("chat.completion.chunk", {"delta": {"content": piece}}))
        else:
            await response.write(_chunk("text_completion", {"text": piece}))
        if delay:
            await asyncio.sleep(delay)
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def make_app(chunk_delay_s: float = 0.0) -> web.Application:
    app = web.Application()
    app[SEEN] = []
    app[CHUNK_DELAY_S] = chunk_delay_s
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/seen-request-ids", _seen)
    app.router.add_post("/extras/tokenize", _tokenize)
    app.router.add_post("/v1/completions", _complete)
    app.router.add_post("/v1/chat/completions", _complete)
    return app


async def start(port: int) -> web.AppRunner:
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("port", type=int)
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0, help="pause between chunks")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(make_app(args.chunk_delay_ms / 1000), host="127.0.0.1", port=args.port,
                access_log=None, print=None)  # fmt: skip


if __name__ == "__main__":
    main()
