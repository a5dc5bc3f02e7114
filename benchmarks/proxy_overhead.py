"""What the audit proxy adds to a request: latency (sequential) and throughput (16 concurrent).

Starts an instant OpenAI-compatible upstream and a real `bastion proxy` in front of it, then
measures, in one run, the same requests sent direct and through the proxy (interleaved, so drift
hits both alike). It also times the two candidate upstream client libraries (aiohttp, httpx)
against the instant upstream, which is the cost the proxy's forwarding step pays.

    .venv/bin/python benchmarks/proxy_overhead.py [--requests 2000] [--seconds 3]

Prints JSON lines, a one-line summary, and last
`{"added_p50_ms": .., "added_p99_ms": .., "rps_16": ..}`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from audit_proxy.keys import KeyStore  # noqa: E402

BODY = {"model": "tiny", "prompt": "def add(a, b):", "max_tokens": 8}
ANSWER = {
    "id": "cmpl-1",
    "object": "text_completion",
    "model": "tiny",
    "choices": [{"index": 0, "text": " return a + b", "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
}
CONCURRENCY = 16


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_upstream(port: int) -> None:
    """The instant upstream: answers every request at once (run in its own process)."""
    import uvloop
    from aiohttp import web

    payload = json.dumps(ANSWER).encode()

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=payload, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def wait_until_up(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with {process.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


Call = Callable[[], Awaitable[None]]


def aiohttp_call(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> Call:
    async def call() -> None:
        async with session.post(url, json=BODY, headers=headers) as resp:
            await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{url}: HTTP {resp.status}")

    return call


def httpx_call(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> Call:
    async def call() -> None:
        resp = await client.post(url, json=BODY, headers=headers)
        if resp.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {resp.status_code}")

    return call


async def sequential(calls: dict[str, Call], n: int) -> dict[str, list[float]]:
    """Latency of each call, interleaved round-robin so both see the same conditions."""
    for call in calls.values():
        for _ in range(100):
            await call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(n):
        for name, call in calls.items():
            started = time.perf_counter()
            await call()
            samples[name].append((time.perf_counter() - started) * 1000)
    return samples


async def throughput(call: Call, seconds: float) -> float:
    """Requests per second with CONCURRENCY callers in flight."""
    deadline = time.perf_counter() + seconds
    done = 0

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await call()
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return done / (time.perf_counter() - started)


def emit(doc: dict[str, object]) -> None:
    print(json.dumps(doc), flush=True)


async def measure(upstream: str, proxy: str, key: str, n: int, seconds: float) -> None:
    user = {"Authorization": f"Bearer {key}", "X-Bastion-Feature": "completion"}
    connector = aiohttp.TCPConnector(limit=CONCURRENCY * 2)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        httpx.AsyncClient(limits=httpx.Limits(max_connections=CONCURRENCY * 2)) as client,
    ):
        direct = aiohttp_call(session, upstream + "/v1/completions", {})
        proxied = aiohttp_call(session, proxy + "/v1/completions", user)
        latency = await sequential({"direct": direct, "proxy": proxied}, n)
        for name, samples in latency.items():
            emit({"measure": "latency_ms", "path": name, "n": len(samples),
                  "p50": round(statistics.median(samples), 3),
                  "p99": round(percentile(samples, 0.99), 3)})  # fmt: skip
        rps = {name: await throughput(call, seconds) for name, call in
               (("direct", direct), ("proxy", proxied))}  # fmt: skip
        for name, value in rps.items():
            emit({"measure": "rps", "path": name, "concurrency": CONCURRENCY, "rps": round(value)})

        # The forwarding step's own cost, per client library, against the same instant upstream.
        libraries = {
            "aiohttp": direct,
            "httpx": httpx_call(client, upstream + "/v1/completions", {}),
        }
        lib_latency = await sequential(libraries, max(n // 2, 200))
        for name, call in libraries.items():
            emit({"measure": "client_library", "library": name,
                  "p50_ms": round(statistics.median(lib_latency[name]), 3),
                  "rps_16": round(await throughput(call, seconds))})  # fmt: skip

    added_p50 = statistics.median(latency["proxy"]) - statistics.median(latency["direct"])
    added_p99 = percentile(latency["proxy"], 0.99) - percentile(latency["direct"], 0.99)
    print(
        f"proxy adds {added_p50:.3f} ms at p50 and {added_p99:.3f} ms at p99 over {n} sequential "
        f"requests; {rps['proxy']:.0f} rps through the proxy vs {rps['direct']:.0f} direct "
        f"at {CONCURRENCY} concurrent (goal: added p50 <= 1 ms)",
        flush=True,
    )
    print(json.dumps({"added_p50_ms": round(added_p50, 3), "added_p99_ms": round(added_p99, 3),
                      "rps_16": round(rps["proxy"])}), flush=True)  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=2000, help="sequential requests per path")
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each rps run")
    parser.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return 0

    with tempfile.TemporaryDirectory(prefix="bastion-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        key = KeyStore(data_dir / "keys.sqlite3").create("bench")
        upstream_port, proxy_port = free_port(), free_port()
        upstream_url = f"http://127.0.0.1:{upstream_port}"
        proxy_url = f"http://127.0.0.1:{proxy_port}"
        env = {**os.environ, "PYTHONPATH": str(REPO), "BASTION_UPSTREAM_API_KEY": "bench-svc"}
        upstream = subprocess.Popen(
            [sys.executable, __file__, "--serve-upstream", str(upstream_port)], env=env
        )
        proxy = subprocess.Popen(
            [sys.executable, "-m", "bastion.proxy_commands", "proxy", "--port", str(proxy_port),
             "--upstream", upstream_url, "--data-dir", str(data_dir)],
            env=env, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_until_up(upstream_url + "/healthz", upstream)
            wait_until_up(proxy_url + "/healthz", proxy)
            asyncio.run(measure(upstream_url, proxy_url, key, args.requests, args.seconds))
        finally:
            for process in (proxy, upstream):
                process.terminate()
                process.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
