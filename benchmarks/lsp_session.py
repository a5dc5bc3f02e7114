"""Shared by the language-server benchmarks: an instant upstream, a real `bastion lsp`, stats."""

from __future__ import annotations

import asyncio
import statistics
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from lsprotocol import types
from pygls.lsp.client import LanguageClient
from pytest_lsp import ClientServerConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bastion.stack import free_port  # noqa: E402


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(name: str, samples: list[float]) -> dict[str, float | str]:
    return {
        "measure": name,
        "p50_ms": round(statistics.median(samples), 3),
        "p99_ms": round(percentile(samples, 0.99), 3),
        "mean_ms": round(statistics.fmean(samples), 3),
        "n": len(samples),
    }


@asynccontextmanager
async def instant_upstream() -> AsyncIterator[str]:
    """The instant upstream in its own process, so it does not share the measuring loop."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "benchmarks" / "instant_upstream.py"), str(port)
    )
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(200):
                try:
                    await client.get(f"{url}/v1/models")
                    break
                except httpx.HTTPError:
                    await asyncio.sleep(0.05)
        yield url
    finally:
        server.terminate()
        await server.wait()


@asynccontextmanager
async def language_server(upstream: str, uri: str, text: str) -> AsyncIterator[LanguageClient]:
    """A real `bastion lsp` talking to `upstream`, with one document open."""
    config = ClientServerConfig(server_command=[sys.executable, "-m", "bastion.cli", "lsp"])
    client = await config.start()
    await client.initialize_session(
        types.InitializeParams(
            capabilities=types.ClientCapabilities(),
            initialization_options={"proxyUrl": upstream, "apiKey": "bench"},
        )
    )
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(
                uri=uri, language_id="python", version=1, text=text
            )
        )
    )
    try:
        yield client
    finally:
        await client.shutdown_session()
        await client.stop()
