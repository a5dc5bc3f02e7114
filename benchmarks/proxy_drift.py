"""Where the spread of LiteLLM's ratio to Bastion comes from: both proxies, block by block.

`proxy_overhead.py` reports LiteLLM's added p50 over Bastion's, and that ratio moves from run to
run (18 to 29 on this machine). This script asks which side moves. Against one instant upstream
it runs, in turn, a block of Bastion (`process` mode) and a block of LiteLLM (as
`proxy_overhead.py` runs it), each request of a block followed by one sent direct, and reports
each block's added p50 over the direct of its own block, with the time since the start:

- the spread of each proxy's added p50 over the blocks (min, median, max);
- the correlation of the two over adjacent blocks: near 1 where the machine's own speed moves
  both, near 0 where one proxy drifts on its own;
- the ratio of adjacent blocks (median, min, max) and the share of blocks under 20.

    .venv/bin/python benchmarks/proxy_drift.py [--blocks 40] [--bastion-requests 300]
        [--litellm-requests 60] [--prompt-kb 0]

Prints a JSON line per block, a one-line summary, and last
`{"blocks", "bastion_added_p50_ms": {"min", "median", "max"}, "litellm_added_p50_ms": {..},
"correlation", "ratio": {"min", "median", "max"}, "blocks_under_20x"}`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.proxy_overhead import (  # noqa: E402
    Call,
    emit,
    request_body,
    sized_call,
    start_bastion,
    start_instant_upstream,
    start_litellm,
)

WARMUP = 200
GOAL_RATIO = 20.0


async def added_p50(proxy: Call, direct: Call, n: int) -> float:
    """The proxy's p50 over `n` requests less direct's, the two taking turns (ms)."""
    proxied, straight = [], []
    for _ in range(n):
        proxied.append(await proxy())
        straight.append(await direct())
    return statistics.median(proxied) - statistics.median(straight)


def spread(values: list[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 3),
        "median": round(statistics.median(values), 3),
        "max": round(max(values), 3),
    }


async def blocks(
    targets: dict[str, tuple[str, dict[str, str]]],
    direct_url: str,
    body: dict[str, object],
    count: int,
    sizes: dict[str, int],
) -> list[dict[str, float]]:
    """`count` rounds of one block per proxy: each proxy's added p50 in its block."""
    rows: list[dict[str, float]] = []
    async with aiohttp.ClientSession() as session:
        direct = sized_call(session, direct_url, {}, body)
        calls = {
            name: sized_call(session, url, headers, body)
            for name, (url, headers) in targets.items()
        }
        for call in calls.values():
            for _ in range(WARMUP):
                await call()
                await direct()
        started = time.perf_counter()
        for block in range(count):
            row: dict[str, float] = {"block": block}
            for name, call in calls.items():
                row[name] = round(await added_p50(call, direct, sizes[name]), 3)
            row["t_s"] = round(time.perf_counter() - started, 1)
            emit(dict(row))
            rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--blocks", type=int, default=40, help="rounds of one block per proxy")
    parser.add_argument("--bastion-requests", type=int, default=300, help="per Bastion block")
    parser.add_argument("--litellm-requests", type=int, default=60, help="per LiteLLM block")
    parser.add_argument("--prompt-kb", type=int, default=0, help="as in proxy_overhead.py")
    args = parser.parse_args()
    body = request_body(args.prompt_kb)

    with tempfile.TemporaryDirectory(prefix="bastion-drift-") as tmp, contextlib.ExitStack() as up:
        env = {**os.environ, "PYTHONPATH": str(REPO), "BASTION_UPSTREAM_API_KEY": "bench-svc"}
        upstream, _ = start_instant_upstream(up, env)
        (Path(tmp) / "bastion").mkdir()
        targets = {
            "bastion": start_bastion(
                up, env, upstream, Path(tmp) / "bastion", "--durability", "process"
            ),
            "litellm": start_litellm(up, env, upstream, Path(tmp)),
        }
        sizes = {"bastion": args.bastion_requests, "litellm": args.litellm_requests}
        rows = asyncio.run(
            blocks(targets, upstream + "/v1/chat/completions", body, args.blocks, sizes)
        )

    bastion = [row["bastion"] for row in rows]
    litellm = [row["litellm"] for row in rows]
    ratios = [lite / own for own, lite in zip(bastion, litellm, strict=True)]
    b, lite, r = spread(bastion), spread(litellm), spread(ratios)
    correlation = round(statistics.correlation(bastion, litellm), 2)
    under = sum(ratio < GOAL_RATIO for ratio in ratios)
    print(
        f"{len(rows)} blocks over {rows[-1]['t_s']:.0f} s: Bastion adds {b['min']:.3f} to "
        f"{b['max']:.3f} ms p50 (median {b['median']:.3f}), LiteLLM {lite['min']:.2f} to "
        f"{lite['max']:.2f} ms (median {lite['median']:.2f}); correlation {correlation}; "
        f"ratio of adjacent blocks {r['min']:.1f} to {r['max']:.1f} (median {r['median']:.1f}), "
        f"under {GOAL_RATIO:g} in {under} of {len(rows)}",
        flush=True,
    )
    summary: dict[str, object] = {
        "blocks": len(rows),
        "bastion_added_p50_ms": b,
        "litellm_added_p50_ms": lite,
        "correlation": correlation,
        "ratio": {k: round(v, 1) for k, v in r.items()},
        "blocks_under_20x": under,
    }
    emit(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
