"""How soon a fresh `bastion lsp` answers `initialize` (goal < 1 s), beside a bare Python start.

Each run spawns a new server process and times spawn → `initialize` answered; the baseline is
spawn → exit of `python -c pass` in the same run, so the ratio shows what the server adds.
The encoder, torch and FAISS load later, in the background, when indexing needs them.

    .venv/bin/python benchmarks/lsp_startup.py [--runs 7]

Prints JSON lines, a one-line summary, and a JSON line last.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time

from lsp_session import ROOT
from lsprotocol import types
from pytest_lsp import ClientServerConfig


async def initialize_once() -> float:
    config = ClientServerConfig(server_command=[sys.executable, "-m", "bastion.cli", "lsp"])
    began = time.perf_counter()
    client = await config.start()
    await client.initialize_session(
        types.InitializeParams(
            capabilities=types.ClientCapabilities(),
            initialization_options={"proxyUrl": "http://127.0.0.1:9", "apiKey": "bench"},
        )
    )
    answered = time.perf_counter() - began
    await client.shutdown_session()
    await client.stop()
    return answered


def bare_python() -> float:
    began = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True, cwd=ROOT)
    return time.perf_counter() - began


async def main(runs: int) -> None:
    server: list[float] = []
    bare: list[float] = []
    for run in range(runs):
        bare.append(bare_python())
        server.append(await initialize_once())
        print(
            json.dumps(
                {"run": run, "initialize_s": round(server[-1], 3), "python_s": round(bare[-1], 3)}
            )
        )
    p50, worst = statistics.median(server), max(server)
    base = statistics.median(bare)
    print(f"initialize answered p50 {p50:.2f} s, worst {worst:.2f} s (bare python {base:.2f} s)")
    print(
        json.dumps(
            {
                "initialize_p50_s": round(p50, 3),
                "initialize_max_s": round(worst, 3),
                "bare_python_p50_s": round(base, 3),
                "goal_s": 1.0,
            }
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    asyncio.run(main(parser.parse_args().runs))
