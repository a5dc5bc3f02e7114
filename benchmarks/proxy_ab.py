"""The proxy of the working tree against the proxy of an earlier commit, paired, in one run.

A change of tens of microseconds is lost in this machine's drift between two runs (a whole
`proxy_overhead.py` run moves by 50 us or more from one minute to the next). So both proxies run
side by side on one instant upstream (`instant_upstream.py`), and the client sends blocks of
`--block-size` sequential requests to one, then the other, alternating which goes first. Each
block's median is compared with its partner's: drift hits both alike.

- latency: the median over block pairs of (working tree - base), and how many pairs the working
  tree won; each side's added p50 over direct (measured in blocks of its own between them),
  and each side's p99 over all its requests (the blocks alternate: drift hits both alike);
- requests/s with 32 clients, `--rps-runs` runs each, alternating which goes first.

The base is checked out with `git archive` into a temporary directory; both run as
`python -m bastion.cli proxy` from their own tree, with the same virtual environment.

    .venv/bin/python benchmarks/proxy_ab.py [--base HEAD~1] [--durability process]
        [--blocks 40] [--block-size 100] [--rps-runs 4] [--prompt-kb 4]

Prints a line per block pair, a one-line summary, and last
`{"base": .., "durability": .., "prompt_kb": .., "paired_p50_us": .., "pairs_won": .., "pairs": ..,
"base_added_p50_us": .., "work_added_p50_us": .., "base_p99_us": .., "work_p99_us": ..,
"base_rps_32": .., "work_rps_32": ..}` (p99: each side's latency over all its requests).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from audit_proxy.keys import KeyStore  # noqa: E402
from bastion.stack import free_port  # noqa: E402
from benchmarks.proxy_overhead import (  # noqa: E402
    Call,
    block_rounds,
    percentile,
    request_body,
    running,
    sized_call,
    start_instant_upstream,
    throughput,
)

WARMUP = 300


def check_out(rev: str, into: Path) -> str:
    """The tree of `rev` under `into`; returns the commit it names."""
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", rev],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", commit],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return commit


async def paired_blocks(
    calls: dict[str, Call], blocks: int, size: int, samples: dict[str, list[float]]
) -> dict[str, list[float]]:
    """Per path, the median of each of its blocks (us); the order of paths flips every block.
    Every latency (us) also goes into `samples`."""
    for call in calls.values():
        for _ in range(WARMUP):
            await call()
    medians: dict[str, list[float]] = {name: [] for name in calls}
    for name, rounds in (await block_rounds(calls, blocks, size)).items():
        for block in rounds:
            in_us = [ms * 1000 for ms in block]
            medians[name].append(statistics.median(in_us))
            samples.setdefault(name, []).extend(in_us)
    return medians


async def sequential(
    targets: dict[str, tuple[str, dict[str, str]]],
    blocks: int,
    size: int,
    samples: dict[str, list[float]],
    body: dict[str, object],
) -> dict[str, list[float]]:
    async with aiohttp.ClientSession() as session:
        calls = {name: sized_call(session, url, h, body) for name, (url, h) in targets.items()}
        return await paired_blocks(calls, blocks, size, samples)


async def rps(url: str, headers: dict[str, str], seconds: float, body: dict[str, object]) -> float:
    async with aiohttp.ClientSession() as session:
        return await throughput(sized_call(session, url, headers, body), seconds)


def proxy_command(port: int, upstream: str, data_dir: Path, durability: str) -> list[str]:
    return [sys.executable, "-m", "bastion.cli", "proxy", "--port", str(port),
            "--upstream", upstream, "--data-dir", str(data_dir),
            "--durability", durability]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--base", default="HEAD", help="the commit to compare with")
    parser.add_argument("--durability", choices=("process", "fsync"), default="process")
    parser.add_argument("--blocks", type=int, default=40)
    parser.add_argument("--block-size", type=int, default=100)
    parser.add_argument("--rps-runs", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--prompt-kb", type=int, default=0, help="KiB of code a request carries")
    args = parser.parse_args()
    body = request_body(args.prompt_kb)

    with tempfile.TemporaryDirectory(prefix="bastion-ab-") as tmp, contextlib.ExitStack() as up:
        base_tree = Path(tmp) / "base"
        commit = check_out(args.base, base_tree)
        trees = {"base": base_tree, "work": REPO}
        env = {**os.environ, "BASTION_UPSTREAM_API_KEY": "bench-svc"}
        upstream, _ = start_instant_upstream(up, env)
        targets: dict[str, tuple[str, dict[str, str]]] = {
            "direct": (upstream + "/v1/chat/completions", {})
        }
        # Proxies run from the temporary directory: `-m` puts the working directory first on
        # the module path, and each must find its own tree's packages (PYTHONPATH).
        os.chdir(tmp)
        for name, tree in trees.items():
            data_dir = Path(tmp) / f"data-{name}"
            key = KeyStore(data_dir / "keys.sqlite3").create("bench")
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            up.enter_context(
                running(
                    proxy_command(port, upstream, data_dir, args.durability),
                    {**env, "PYTHONPATH": str(tree)},
                    url + "/healthz",
                )
            )
            headers = {"Authorization": f"Bearer {key}", "X-Bastion-Feature": "chat"}
            targets[name] = (url + "/v1/chat/completions", headers)
        started = time.perf_counter()
        samples: dict[str, list[float]] = {}
        blocks = sequential(targets, args.blocks, args.block_size, samples, body)
        medians = asyncio.run(blocks)
        pairs = list(zip(medians["base"], medians["work"], strict=True))
        for i, (base, work) in enumerate(pairs):
            print(json.dumps({"pair": i, "base_us": round(base), "work_us": round(work)}))
        rates: dict[str, list[float]] = {"base": [], "work": []}
        order = ["base", "work"]
        for _ in range(args.rps_runs):
            for name in order:
                url, headers = targets[name]
                rates[name].append(asyncio.run(rps(url, headers, args.seconds, body)))
            order.reverse()
        os.chdir(REPO)
    direct = statistics.median(medians["direct"])
    doc = {
        "base": commit,
        "durability": args.durability,
        "prompt_kb": args.prompt_kb,
        "paired_p50_us": round(statistics.median(work - base for base, work in pairs)),
        "pairs_won": sum(1 for base, work in pairs if work < base),
        "pairs": len(pairs),
        "base_added_p50_us": round(statistics.median(medians["base"]) - direct),
        "work_added_p50_us": round(statistics.median(medians["work"]) - direct),
        "base_p99_us": round(percentile(samples["base"], 0.99)),
        "work_p99_us": round(percentile(samples["work"], 0.99)),
        "base_rps_32": round(statistics.mean(rates["base"])),
        "work_rps_32": round(statistics.mean(rates["work"])),
    }
    print(
        f"working tree vs {commit} ({args.durability}): {doc['paired_p50_us']:+d} us p50 "
        f"(paired blocks, won {doc['pairs_won']} of {doc['pairs']}); added p50 "
        f"{doc['base_added_p50_us']} -> {doc['work_added_p50_us']} us; p99 "
        f"{doc['base_p99_us']} -> {doc['work_p99_us']} us; requests/s at 32 "
        f"{doc['base_rps_32']} -> {doc['work_rps_32']} "
        f"(x{doc['work_rps_32'] / max(doc['base_rps_32'], 1):.2f}); "
        f"{time.perf_counter() - started:.0f} s",
        flush=True,
    )
    print(json.dumps(doc), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
