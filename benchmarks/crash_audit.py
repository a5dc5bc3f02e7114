"""Crash test of the audit log: kill -9 a real `bastion proxy` under load, restart, check.

Each cycle starts the proxy on the same data dir, sends streamed and sized requests from
`--concurrency` clients to an upstream that streams its chunks `--chunk-delay-ms` apart, and
kills the proxy with SIGKILL at a random moment once answers flow (the clock starts at the
first whole one: a slow disk's first fsyncs must not leave a cycle with nothing received to
check). After the restart it checks that:

- every response a client received whole has its outcome record (matched by the
  `x-bastion-request-id` response header);
- every request that reached the upstream has its request record (the proxy sends the audit id
  upstream as `X-Request-Id`; the upstream lists those it saw);
- `bastion audit export` and `bastion audit verify` pass on the whole log.

Power loss cannot be simulated here: a kill -9 tests what "process" durability promises; for
"fsync" it tests the same, not the fsync itself.

    .venv/bin/python benchmarks/crash_audit.py [--cycles 50] [--durability process] [--seed 1]

Prints a JSON line per cycle, a one-line summary, and last
`{"cycles": N, "lost": N, "verify_failures": N}`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from audit_proxy.keys import KeyStore  # noqa: E402
from audit_proxy.store import AuditStore  # noqa: E402
from bastion.stack import free_port  # noqa: E402

ROUTES = ("/v1/completions", "/v1/chat/completions")
# The kill comes anyway when no answer came whole this long after the load began.
FIRST_ANSWER_WITHIN_S = 10.0


@dataclass
class Load:
    """What the clients of one cycle saw."""

    sent: int = 0
    whole: set[str] = field(default_factory=set)  # ids of responses received in full
    flowing: asyncio.Event = field(default_factory=asyncio.Event)  # set at the first whole one
    cut: int = 0  # responses that broke off (the kill)


def wait_until_up(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    import httpx

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up:\n{log.read_text()}")


def start_proxy(
    port: int, upstream: str, data_dir: Path, durability: str, log: Path
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "BASTION_UPSTREAM_API_KEY": "crash-svc"}
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "bastion.cli", "proxy", "--port", str(port),
             "--upstream", upstream, "--data-dir", str(data_dir), "--durability", durability],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    wait_until_up(f"http://127.0.0.1:{port}/healthz", process, log)
    return process


async def one_request(
    session: aiohttp.ClientSession, url: str, key: str, stream: bool, load: Load
) -> None:
    route = random.choice(ROUTES)
    body: dict[str, object] = {"model": "instant", "stream": stream, "max_tokens": 4}
    if route.endswith("chat/completions"):
        body["messages"] = [{"role": "user", "content": "def add(a, b):"}]
    else:
        body["prompt"] = "def add(a, b):"
    load.sent += 1
    headers = {"Authorization": f"Bearer {key}", "X-Bastion-Feature": "completion"}
    async with session.post(url + route, json=body, headers=headers) as resp:
        request_id = resp.headers.get("x-bastion-request-id")
        data = await resp.read()  # raises if the body breaks off before its end
    whole = resp.status == 200 and (data.endswith(b"data: [DONE]\n\n") if stream else
                                     data.startswith(b"{") and data.endswith(b"}"))  # fmt: skip
    if whole and request_id:
        load.whole.add(request_id)
        load.flowing.set()


async def drive(url: str, key: str, concurrency: int, process: subprocess.Popen[bytes],
                kill_after_s: float) -> Load:  # fmt: skip
    """Keep `concurrency` requests in flight; SIGKILL the proxy after `kill_after_s`."""
    load = Load()
    killed = asyncio.Event()

    async def client(session: aiohttp.ClientSession, n: int) -> None:
        stream = n % 2 == 0
        while not killed.is_set():
            try:
                await one_request(session, url, key, stream, load)
            except (TimeoutError, aiohttp.ClientError):
                load.cut += 1
                return
            stream = not stream

    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency), timeout=timeout
    ) as session:
        clients = [asyncio.create_task(client(session, n)) for n in range(concurrency)]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(load.flowing.wait(), FIRST_ANSWER_WITHIN_S)
        await asyncio.sleep(kill_after_s)
        process.send_signal(signal.SIGKILL)
        killed.set()
        await asyncio.gather(*clients)
    process.wait(10)
    return load


def upstream_seen(upstream: str) -> set[str]:
    import httpx

    return set(httpx.get(upstream + "/seen-request-ids", timeout=10).json())


def export_and_verify(data_dir: Path, work: Path) -> tuple[bool, str]:
    """`bastion audit export` then `bastion audit verify`, as an auditor would run them."""
    export = work / "export.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cli = [sys.executable, "-m", "bastion.cli", "audit"]
    done = subprocess.run(
        [*cli, "export", "--data-dir", str(data_dir), str(export)],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        return False, done.stderr.strip()
    done = subprocess.run(
        [*cli, "verify", str(export)], env=env, capture_output=True, text=True, check=False
    )
    return done.returncode == 0, done.stdout.strip().splitlines()[0] if done.stdout else ""


def emit(doc: dict[str, object]) -> None:
    print(json.dumps(doc), flush=True)


def run(args: argparse.Namespace) -> dict[str, int]:
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="bastion-crash-") as tmp:
        work = Path(tmp)
        data_dir = work / "data"
        key = KeyStore(data_dir / "keys.sqlite3").create("crash")
        upstream_port, proxy_port = free_port(), free_port()
        upstream = f"http://127.0.0.1:{upstream_port}"
        proxy_url = f"http://127.0.0.1:{proxy_port}"
        upstream_log, proxy_log = work / "upstream.log", work / "proxy.log"
        with upstream_log.open("wb") as out:
            upstream_process = subprocess.Popen(
                [sys.executable, str(REPO / "benchmarks" / "instant_upstream.py"),
                 str(upstream_port), "--chunk-delay-ms", str(args.chunk_delay_ms)],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        lost_total = verify_failures = whole_total = sent_total = 0
        try:
            wait_until_up(upstream + "/v1/models", upstream_process, upstream_log)
            proxy = start_proxy(proxy_port, upstream, data_dir, args.durability, proxy_log)
            for cycle in range(args.cycles):
                kill_after_s = rng.uniform(0.05, args.max_kill_after_s)
                load = asyncio.run(drive(proxy_url, key, args.concurrency, proxy, kill_after_s))
                # Restart on the same data dir, then check what the killed one left behind.
                proxy = start_proxy(proxy_port, upstream, data_dir, args.durability, proxy_log)
                store = AuditStore(data_dir / "audit.sqlite3")
                try:
                    recorded = {r.id for r in store.requests()}
                    finished = {o.request_id for o in store.outcomes()}
                finally:
                    store.close()
                seen = upstream_seen(upstream)
                no_outcome = load.whole - finished
                no_request = seen - recorded
                ok, verdict = export_and_verify(data_dir, work)
                lost = len(no_outcome) + len(no_request)
                lost_total += lost
                verify_failures += not ok
                whole_total += len(load.whole)
                sent_total += load.sent
                emit({"cycle": cycle, "kill_after_s": round(kill_after_s, 3), "sent": load.sent,
                      "received_whole": len(load.whole), "cut": load.cut,
                      "seen_upstream": len(seen), "records": len(recorded),
                      "outcomes": len(finished), "lost_outcomes": sorted(no_outcome),
                      "lost_requests": sorted(no_request), "verify_ok": ok,
                      "verify": verdict})  # fmt: skip
        finally:
            for process in (proxy, upstream_process):
                process.terminate()
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
    print(
        f"{args.cycles} kill -9 cycles ({args.durability} durability, {args.concurrency} "
        f"clients): {sent_total} requests sent, {whole_total} received whole; {lost_total} "
        f"records lost, {verify_failures} failed verifications",
        flush=True,
    )
    return {"cycles": args.cycles, "lost": lost_total, "verify_failures": verify_failures}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--durability", choices=("process", "fsync"), default="process")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--chunk-delay-ms", type=float, default=2.0)
    parser.add_argument("--max-kill-after-s", type=float, default=0.6)
    args = parser.parse_args(argv)
    random.seed(args.seed)
    result = run(args)
    print(json.dumps(result), flush=True)
    return 0 if result["lost"] == 0 and result["verify_failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
