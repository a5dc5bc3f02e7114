"""Does the editor stay responsive while the language server makes its embedding model?

On a user's first start `bastion lsp` exports the bundled MiniLM to ONNX and quantises it to
int8 (about 15 s on 2 cores) before it embeds the workspace. Meanwhile the editor keeps asking
for code actions, completions and hovers; each must still be answered at once. This lists code
actions every 50 ms through a real `bastion lsp` over stdio until the server logs that the
workspace is embedded, twice in one run:

- `cold`: an empty model cache, so the export runs;
- `warm`: the model cache the cold run left, with a fresh index, so only the embedding runs.

Each run also records the server's peak resident memory. A third start on an empty cache is
shut down 3 s in, mid-export, as the editor does when the user sets a key: how long the
server takes to exit (VS Code kills a server that has not stopped in 5 s).

`--burn N` keeps N other processes busy meanwhile, as an editor, a browser and a build do on
a developer's laptop. Prints a JSON line per run, a one-line summary, and last
`{"cold": {...}, "warm": {...}, "p99_ratio": .., "max_ratio": .., "stop_mid_export_s": ..}`.
Goals: cold p99 ≤ 50 ms; a stop mid-export under 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from lsp_session import ROOT, instant_upstream, summary
from lsprotocol import types
from pygls.lsp.client import LanguageClient

from tests.lsp.real_server import start_on_workspace

INTERVAL_S = 0.05
EMBEDDED = "workspace embeddings:"
# Real sources for the workspace: enough chunks that embedding is not instant.
WORKSPACE_SOURCES = sorted((ROOT / "lsp_server").glob("*.py"))[:12]


def _burn() -> None:
    while True:
        pass


def _workspace(into: Path) -> Path:
    into.mkdir()
    for source in WORKSPACE_SOURCES:
        shutil.copy(source, into / source.name)
    return into


def _code_action_params(uri: str) -> types.CodeActionParams:
    at = types.Position(line=3, character=0)
    return types.CodeActionParams(
        text_document=types.TextDocumentIdentifier(uri=uri),
        range=types.Range(start=at, end=at),
        context=types.CodeActionContext(diagnostics=[]),
    )


def _memory_mb(client: LanguageClient) -> dict[str, float]:
    """The server's peak and current resident memory (its own, not its children's)."""
    assert client._server is not None
    fields = dict(
        line.split(":", 1)
        for line in Path(f"/proc/{client._server.pid}/status").read_text().splitlines()
    )
    return {
        f"server_{name}_mb": round(int(fields[key].split()[0]) / 1024, 1)
        for name, key in (("peak_rss", "VmHWM"), ("rss", "VmRSS"))
    }


async def _start(name: str, upstream: str, model_cache: Path, scratch: Path) -> LanguageClient:
    """A real `bastion lsp` on a fresh copy of the workspace and a fresh index cache."""
    workspace = _workspace(scratch / f"workspace-{name}")
    env = {
        "BASTION_CACHE": str(model_cache),
        "BASTION_INDEX_CACHE": str(scratch / f"index-{name}"),
    }
    options = {"proxyUrl": upstream, "apiKey": "bench"}
    client = await start_on_workspace(workspace, env, options)
    return client


async def _stop_mid_export(upstream: str, scratch: Path) -> float:
    """Seconds from `shutdown` to the server's exit, asked 3 s into a first-start export."""
    client = await _start("stop", upstream, scratch / "models-stop", scratch)
    await asyncio.sleep(3)
    asked = time.perf_counter()
    await client.shutdown_session()
    await client.stop()
    return round(time.perf_counter() - asked, 2)


async def _run(name: str, upstream: str, model_cache: Path, scratch: Path) -> dict[str, Any]:
    started = time.perf_counter()
    client = await _start(name, upstream, model_cache, scratch)
    workspace = scratch / f"workspace-{name}"

    def embedded() -> bool:
        return any(m.message.startswith(EMBEDDED) for m in client.log_messages)

    document = workspace / WORKSPACE_SOURCES[0].name
    uri = document.as_uri()
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(
                uri=uri, language_id="python", version=1, text=document.read_text()
            )
        )
    )
    samples: list[float] = []
    try:
        deadline = time.monotonic() + 300
        while not embedded():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: the workspace was not embedded within 300 s")
            asked = time.perf_counter()
            actions = await client.text_document_code_action_async(_code_action_params(uri))
            samples.append((time.perf_counter() - asked) * 1000)
            if not actions:
                raise RuntimeError(f"{name}: no code actions")
            await asyncio.sleep(INTERVAL_S)
        memory = _memory_mb(client)
    finally:
        await client.shutdown_session()
        await client.stop()
    result = summary(f"code_action_{name}", samples)
    return {
        **result,
        "max_ms": round(max(samples), 1),
        "over_100ms": sum(s > 100 for s in samples),
        "embedded_after_s": round(time.perf_counter() - started, 1),
        **memory,
    }


async def main(burn: int) -> None:
    burners = [multiprocessing.Process(target=_burn, daemon=True) for _ in range(burn)]
    for process in burners:
        process.start()
    scratch = Path(tempfile.mkdtemp(prefix="bastion-first-start-"))
    try:
        model_cache = scratch / "models"
        async with instant_upstream() as upstream:
            cold = await _run("cold", upstream, model_cache, scratch)
            print(json.dumps(cold))
            warm = await _run("warm", upstream, model_cache, scratch)
            print(json.dumps(warm))
            stop_s = await _stop_mid_export(upstream, scratch)
            print(json.dumps({"measure": "stop_mid_export", "seconds": stop_s}))
    finally:
        for process in burners:
            process.kill()
        shutil.rmtree(scratch, ignore_errors=True)
    p99_ratio = round(float(cold["p99_ms"]) / max(float(warm["p99_ms"]), 0.001), 2)
    max_ratio = round(float(cold["max_ms"]) / max(float(warm["max_ms"]), 0.001), 2)
    print(
        f"first_start_responsiveness (burn {burn}): code actions while the model is made "
        f"p50 {cold['p50_ms']} ms, p99 {cold['p99_ms']} ms, max {cold['max_ms']} ms over "
        f"{cold['n']} requests ({cold['embedded_after_s']} s); with the model cached p99 "
        f"{warm['p99_ms']} ms, max {warm['max_ms']} ms; p99 ratio {p99_ratio}x; server peak RSS "
        f"{cold['server_peak_rss_mb']} vs {warm['server_peak_rss_mb']} MB; stopped mid-export "
        f"in {stop_s} s (goals: cold p99 ≤ 50 ms, stop < 1 s)"
    )
    print(
        json.dumps(
            {
                "cold": cold,
                "warm": warm,
                "p99_ratio": p99_ratio,
                "max_ratio": max_ratio,
                "stop_mid_export_s": stop_s,
            }
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burn", type=int, default=0, help="busy processes meanwhile")
    asyncio.run(main(parser.parse_args().burn))
