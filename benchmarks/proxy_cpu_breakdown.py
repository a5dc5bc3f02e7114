"""Where the proxy's CPU goes: CPU per request of the whole proxy, and of the proxy with one part
replaced by a no-op, side by side in one run.

Microbenchmarks mislead here: with the client, the proxy and the upstream taking turns on two
cores, every request runs on cold caches, and a function that takes 3 us in a loop (sealing a
payload, say) takes 30-50 us in the proxy. So each part is measured by leaving it out of a real
proxy process and reading that process's CPU time (/proc/PID/stat) over sequential requests:

- `store`: the audit store's two record calls return at once (no seal, no leaf, no staging);
- `filing`: records are staged but never filed into SQLite (the part of `store` done later);
- `relay`: the upstream call is replaced by a fixed answer (the upstream's own work goes too);
- `policy`: that layer passes the request on untouched;
- `access_log`, `metrics`: that observer of the exchange does nothing.

    .venv/bin/python benchmarks/proxy_cpu_breakdown.py [--requests 2000]

Prints a JSON line per variant, a one-line summary, and last
`{"full_us": .., "parts_us": {"store": .., "relay": .., ...}}` (CPU microseconds per request).
Not a product configuration: the variants exist only inside this script's proxy processes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from audit_proxy.keys import KeyStore  # noqa: E402
from bastion.stack import free_port  # noqa: E402
from benchmarks.proxy_overhead import running, sized_call  # noqa: E402

VARIANTS = ("full", "store", "filing", "relay", "policy", "access_log", "metrics")
CANNED = json.dumps(
    {"id": "x", "object": "chat.completion", "created": 1, "model": "instant",
     "choices": [{"index": 0, "finish_reason": "stop",
                  "message": {"role": "assistant", "content": "return value\n"}}],
     "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}
).encode()  # fmt: skip


def leave_out(part: str) -> None:
    """Replace `part` of the proxy with a no-op (in this process only)."""
    if part == "store":
        from audit_proxy.store import AuditStore

        async def record_request(self: Any, **_: Any) -> str:
            return uuid.uuid4().hex

        async def record_outcome(self: Any, *_: Any, **__: Any) -> None:
            return None

        AuditStore.record_request = record_request  # type: ignore[method-assign]
        AuditStore.record_outcome = record_outcome  # type: ignore[method-assign]
    elif part == "filing":
        from audit_proxy.store import AuditStore

        def no_filing(self: Any) -> None:
            return None

        AuditStore._schedule_filing = no_filing  # type: ignore[method-assign]
    elif part == "relay":
        from audit_proxy.asgi import read_body
        from audit_proxy.forward import Upstream

        async def relay(self: Any, scope: Any, receive: Any, send: Any) -> None:
            await read_body(receive)
            headers = [(b"content-type", b"application/json"),
                       (b"content-length", str(len(CANNED)).encode())]  # fmt: skip
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": CANNED, "more_body": False})

        Upstream.__call__ = relay  # type: ignore[method-assign]
    elif part == "policy":
        from audit_proxy.policy.layer import ApplyPolicy

        async def pass_on(self: Any, scope: Any, receive: Any, send: Any) -> None:
            await self.app(scope, receive, send)

        ApplyPolicy.__call__ = pass_on  # type: ignore[method-assign]
    elif part == "access_log":
        import audit_proxy.app

        audit_proxy.app.log_access = lambda scope, seen: None
    elif part == "metrics":
        from audit_proxy.metrics import CountRequests

        def count_nothing(self: Any, scope: Any, seen: Any) -> None:
            return None

        CountRequests.__call__ = count_nothing  # type: ignore[method-assign]


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(url: str, headers: dict[str, str], pids: list[int], n: int) -> list[float]:
    """Microseconds per request: wall, then the CPU of each of `pids`."""
    async with aiohttp.ClientSession() as session:
        call = sized_call(session, url, headers)
        for _ in range(200):
            await call()
        before = [cpu_s(pid) for pid in pids]
        started = time.perf_counter()
        for _ in range(n):
            await call()
        wall = time.perf_counter() - started
        after = [cpu_s(pid) for pid in pids]
    return [wall * 1e6 / n] + [(a - b) * 1e6 / n for a, b in zip(after, before, strict=True)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.serve:  # a proxy process of one variant
        leave_out(args.serve)
        from bastion.cli import main as bastion_main

        sys.argv = ["bastion", *rest]
        return bastion_main()

    env = {**os.environ, "PYTHONPATH": str(REPO), "BASTION_UPSTREAM_API_KEY": "bench-svc"}
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bastion-cpu-") as tmp, contextlib.ExitStack() as up:
        port = free_port()
        upstream = f"http://127.0.0.1:{port}"
        upstream_process = up.enter_context(
            running(
                [sys.executable, str(REPO / "benchmarks" / "instant_upstream.py"), str(port)],
                env,
                upstream + "/v1/models",
            )
        )
        wall, upstream_cpu = asyncio.run(
            measure(upstream + "/v1/chat/completions", {}, [upstream_process.pid], args.requests)
        )
        results["direct"] = {"wall_us": wall, "proxy_cpu_us": 0.0, "upstream_cpu_us": upstream_cpu}
        for variant in VARIANTS:
            data_dir = Path(tmp) / variant
            key = KeyStore(data_dir / "keys.sqlite3").create("bench")
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            command = [sys.executable, __file__, "--serve", variant, "proxy", "--port", str(port),
                       "--upstream", upstream, "--data-dir", str(data_dir)]  # fmt: skip
            with running(command, env, url + "/healthz") as proxy:
                user = {"Authorization": f"Bearer {key}", "X-Bastion-Feature": "chat"}
                wall, proxy_cpu, upstream_cpu = asyncio.run(
                    measure(
                        url + "/v1/chat/completions",
                        user,
                        [proxy.pid, upstream_process.pid],
                        args.requests,
                    )
                )
            results[variant] = {
                "wall_us": wall,
                "proxy_cpu_us": proxy_cpu,
                "upstream_cpu_us": upstream_cpu,
            }
    for name, result in results.items():
        print(json.dumps({"variant": name, **{k: round(v) for k, v in result.items()}}), flush=True)
    full = results["full"]["proxy_cpu_us"]
    parts = {
        variant: round(full - results[variant]["proxy_cpu_us"])
        for variant in VARIANTS
        if variant != "full"
    }
    shown = ", ".join(f"{name} {us} us" for name, us in parts.items())
    print(f"proxy CPU per sequential request: {full:.0f} us; of which {shown} "
          "(each part's CPU = full minus the proxy without it)", flush=True)  # fmt: skip
    print(json.dumps({"full_us": round(full), "parts_us": parts}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
