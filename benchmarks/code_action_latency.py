"""How long listing code actions takes: no model call, so it must feel instant.

Lists Bastion's code actions (with a diagnostic in range) at every line of a 400-line file through
a real `bastion lsp` over stdio, as an editor does when the cursor moves. The first round warms
up. Prints JSON lines, a one-line summary, and last `{"p50_ms": .., "p99_ms": ..}`.
Goal: p99 ≤ 5 ms. That listing calls no model is asserted by tests/e2e (counted at the proxy).
"""

from __future__ import annotations

import asyncio
import json
import time

from lsp_session import instant_upstream, language_server, summary
from lsprotocol import types

ROUNDS = 3
SOURCE = "".join(
    f"def function_{i}(value):\n    return undefined_name_{i} + value\n\n" for i in range(134)
)


async def list_actions(upstream: str) -> list[float]:
    uri = "file:///bench/actions.py"
    samples: list[float] = []
    async with language_server(upstream, uri, SOURCE) as client:
        lines = SOURCE.count("\n")
        for round_ in range(ROUNDS):
            for line in range(lines):
                at = types.Position(line=line, character=4)
                diagnostic = types.Diagnostic(
                    range=types.Range(start=at, end=types.Position(line=line, character=20)),
                    message=f"Undefined name `undefined_name_{line // 3}`",
                    source="ruff",
                )
                params = types.CodeActionParams(
                    text_document=types.TextDocumentIdentifier(uri=uri),
                    range=types.Range(start=at, end=at),
                    context=types.CodeActionContext(diagnostics=[diagnostic]),
                )
                started = time.perf_counter()
                actions = await client.text_document_code_action_async(params)
                elapsed = (time.perf_counter() - started) * 1000
                if not actions:
                    raise RuntimeError(f"line {line}: no code actions")
                if round_ > 0:
                    samples.append(elapsed)
    return samples


async def main() -> None:
    async with instant_upstream() as upstream:
        listing = summary("code_action_list", await list_actions(upstream))
    print(json.dumps(listing))
    print(
        f"code_action_latency: listing p50 {listing['p50_ms']} ms, p99 {listing['p99_ms']} ms "
        f"over {listing['n']} requests on a 400-line file (goal p99 ≤ 5 ms; no model call)"
    )
    print(json.dumps({"p50_ms": listing["p50_ms"], "p99_ms": listing["p99_ms"]}))


if __name__ == "__main__":
    asyncio.run(main())
