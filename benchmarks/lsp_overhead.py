"""The language server's own time per inline completion, against an upstream that answers at once.

One run measures, side by side: (a) an inline completion round trip through `bastion lsp` (stdio
JSON-RPC, document state, context windows, prompt, HTTP stream, post-processing) and (b) the same
streamed HTTP call made directly to the upstream. Prints JSON lines, a one-line summary, and last
`{"p50_ms": .., "p99_ms": ..}` for (a).
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
from lsp_session import instant_upstream, language_server, summary
from lsprotocol import types
from pygls.lsp.client import LanguageClient

ITERATIONS = 300
WARMUP = 20
SOURCE = "import os\n\n\ndef load(path):\n    data = open(path).read()\n    " + "\n" * 3


async def lsp_round_trips(upstream: str) -> list[float]:
    uri = "file:///bench/load.py"
    async with language_server(upstream, uri, SOURCE) as client:
        return await _timed_completions(client, uri)


async def _timed_completions(client: LanguageClient, uri: str) -> list[float]:
    line, character = 5, 4
    samples: list[float] = []
    for i in range(WARMUP + ITERATIONS):
        # Type one character the suggestion does not start with, so the cache cannot answer.
        at = types.Position(line=line, character=character)
        client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=i + 2),
                content_changes=[types.TextDocumentContentChangePartial(
                    range=types.Range(start=at, end=at), text="x")],
            )
        )  # fmt: skip
        character += 1
        params = types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=types.Position(line=line, character=character),
            context=types.InlineCompletionContext(
                trigger_kind=types.InlineCompletionTriggerKind.Automatic
            ),
        )
        started = time.perf_counter()
        result = await client.text_document_inline_completion_async(params)
        elapsed = (time.perf_counter() - started) * 1000
        if result is None or not result.items:
            raise RuntimeError(f"iteration {i}: the language server returned no completion")
        if i >= WARMUP:
            samples.append(elapsed)
    return samples


async def direct_round_trips(upstream: str) -> list[float]:
    body = {"model": "instant", "stream": True, "max_tokens": 96,
            "messages": [{"role": "user", "content": SOURCE}]}  # fmt: skip
    samples: list[float] = []
    async with httpx.AsyncClient(base_url=upstream) as client:
        for i in range(WARMUP + ITERATIONS):
            started = time.perf_counter()
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                async for _ in response.aiter_bytes():
                    pass
            if i >= WARMUP:
                samples.append((time.perf_counter() - started) * 1000)
    return samples


async def main() -> None:
    async with instant_upstream() as upstream:
        direct = summary("direct_upstream_call", await direct_round_trips(upstream))
        lsp = summary("lsp_inline_completion", await lsp_round_trips(upstream))
    print(json.dumps(direct))
    print(json.dumps(lsp))
    own = float(lsp["p50_ms"]) - float(direct["p50_ms"])
    print(
        f"lsp_overhead: inline completion p50 {lsp['p50_ms']} ms, p99 {lsp['p99_ms']} ms "
        f"(direct upstream call p50 {direct['p50_ms']} ms, so the server's own p50 ≈ {own:.2f} ms;"
        f" goal p50 ≤ 5, p99 ≤ 25)"
    )
    print(json.dumps({"p50_ms": lsp["p50_ms"], "p99_ms": lsp["p99_ms"]}))


if __name__ == "__main__":
    asyncio.run(main())
