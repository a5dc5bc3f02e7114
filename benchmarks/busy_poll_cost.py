"""What adaptive busy polling saves and costs: the default proxy beside one with it off, in one run.

Two `bastion proxy` processes (`process` mode) on one instant upstream (`instant_upstream.py`):
`poll`, as it starts by default (`busy_poll_us` 500, see audit_proxy.busy_poll), and `off`
(`--busy-poll-us 0`). For each traffic pattern the client sends blocks of sequential requests
to direct, `poll` and `off` in turn (the order flips every round, so drift hits all alike). For
each proxy it reports the added p50 and p99 over direct, and the CPU its process used per
request: all its threads (/proc/PID/task/*/schedstat), over the whole pattern, so what the
polling burns after a block counts too.

- `back_to_back`: each request as soon as the last answer is in: both windows stay open;
- `paced_1ms`, `paced_30ms`: that pause after every request (a fast batch client; an editor's
  keystrokes): the window after a response closes; the one after a request stays open while
  the loop's turn through the upstream takes under 0.5 ms, as the cold one at 30 ms does not;
- `concurrent_32`: requests/s with 32 clients in flight, and CPU per request;
- `idle`: CPU per second of each proxy with no requests at all, after the rest.

    .venv/bin/python benchmarks/busy_poll_cost.py [--blocks 20] [--block-size 100]
        [--paced-requests 200] [--seconds 3]

Prints a JSON line per pattern, a one-line summary, and last
`{"back_to_back": {"poll": {"added_p50_ms", "added_p99_ms", "cpu_us_per_request"}, "off": {..}},
"paced_1ms": {..}, "paced_30ms": {..}, "concurrent_32": {"poll": {"rps", "cpu_us_per_request"},
"off": {..}}, "idle": {"poll": {"cpu_ms_per_s"}, "off": {..}}}`.
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
from collections.abc import Iterator
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from audit_proxy.store import FILE_AFTER_S  # noqa: E402
from benchmarks.proxy_overhead import (  # noqa: E402
    BODY,
    CONCURRENCY,
    Call,
    added_latency,
    block_rounds,
    launch_bastion,
    sized_call,
    start_instant_upstream,
    throughput,
)

PROXIES = {"poll": (), "off": ("--busy-poll-us", "0")}
WARMUP = 200


def cpu_s(pid: int) -> float:
    """CPU seconds all threads of process `pid` have run (ns-precise, unlike /proc/PID/stat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that just ended
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


class Meter:
    """Each proxy's CPU, read before and after a pattern."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids

    @contextlib.contextmanager
    def used(self) -> Iterator[dict[str, float]]:
        """Yields a dict that holds each proxy's CPU seconds over the block, once it ends."""
        before = {name: cpu_s(pid) for name, pid in self.pids.items()}
        spent: dict[str, float] = {}
        yield spent
        spent.update({name: cpu_s(pid) - before[name] for name, pid in self.pids.items()})


async def pattern(
    meter: Meter, calls: dict[str, Call], blocks: int, size: int, pause_s: float
) -> dict[str, dict[str, float]]:
    """Added p50 and p99 over direct and CPU per request of each proxy, for one pattern."""
    with meter.used() as spent:
        by_block = await block_rounds(calls, blocks, size, pause_s)
    samples = {name: [ms for block in got for ms in block] for name, got in by_block.items()}
    direct = samples["direct"]
    return {
        name: {
            **added_latency(samples[name], direct),
            "cpu_us_per_request": round(spent[name] / len(samples[name]) * 1e6),
        }
        for name in meter.pids
    }


async def concurrent(
    meter: Meter, calls: dict[str, Call], seconds: float
) -> dict[str, dict[str, float]]:
    """Requests/s at CONCURRENCY and CPU per request of each proxy, two runs each, alternating."""
    done: dict[str, float] = {name: 0.0 for name in meter.pids}
    cpu: dict[str, float] = {name: 0.0 for name in meter.pids}
    for order in (list(meter.pids), list(reversed(meter.pids))):
        for name in order:
            with meter.used() as spent:
                done[name] += await throughput(calls[name], seconds) * seconds
            cpu[name] += spent[name]
    return {
        name: {
            "rps": round(done[name] / (2 * seconds)),
            "cpu_us_per_request": round(cpu[name] / done[name] * 1e6),
        }
        for name in meter.pids
    }


def idle(meter: Meter, seconds: float) -> dict[str, dict[str, float]]:
    """CPU milliseconds per second of each proxy with nothing to do, once each has filed what
    the last pattern left it (within FILE_AFTER_S)."""
    time.sleep(1 + FILE_AFTER_S)
    with meter.used() as spent:
        time.sleep(seconds)
    return {name: {"cpu_ms_per_s": round(spent[name] / seconds * 1000, 2)} for name in spent}


async def run_patterns(
    meter: Meter, targets: dict[str, tuple[str, dict[str, str]]], args: argparse.Namespace
) -> dict[str, dict[str, dict[str, float]]]:
    connector = aiohttp.TCPConnector(limit=CONCURRENCY * 2)
    async with aiohttp.ClientSession(connector=connector) as session:
        calls = {name: sized_call(session, url, h, BODY) for name, (url, h) in targets.items()}
        for call in calls.values():
            for _ in range(WARMUP):
                await call()
        result = {"back_to_back": await pattern(meter, calls, args.blocks, args.block_size, 0)}
        _emit("back_to_back", result["back_to_back"])
        for pace_ms in (1, 30):
            size = max(args.paced_requests // 4, 1)
            name = f"paced_{pace_ms}ms"
            result[name] = await pattern(meter, calls, 4, size, pace_ms / 1000)
            _emit(name, result[name])
        result[f"concurrent_{CONCURRENCY}"] = await concurrent(meter, calls, args.seconds)
        _emit(f"concurrent_{CONCURRENCY}", result[f"concurrent_{CONCURRENCY}"])
    result["idle"] = idle(meter, args.seconds)
    _emit("idle", result["idle"])
    return result


def _emit(name: str, figures: dict[str, dict[str, float]]) -> None:
    print(json.dumps({"pattern": name, **figures}), flush=True)


def summary(result: dict[str, dict[str, dict[str, float]]]) -> str:
    parts = []
    for name in ("back_to_back", "paced_1ms", "paced_30ms"):
        poll, off = result[name]["poll"], result[name]["off"]
        parts.append(
            f"{name}: p50 +{poll['added_p50_ms']:.3f} vs +{off['added_p50_ms']:.3f} ms "
            f"({poll['added_p50_ms'] / max(off['added_p50_ms'], 1e-3):.2f}x), p99 "
            f"+{poll['added_p99_ms']:.3f} vs +{off['added_p99_ms']:.3f} ms, CPU "
            f"{poll['cpu_us_per_request']:.0f} vs {off['cpu_us_per_request']:.0f} us a request "
            f"({poll['cpu_us_per_request'] / max(off['cpu_us_per_request'], 1):.2f}x)"
        )
    busy = result[f"concurrent_{CONCURRENCY}"]
    parts.append(
        f"{CONCURRENCY} in flight: {busy['poll']['rps']:.0f} vs {busy['off']['rps']:.0f} rps, "
        f"{busy['poll']['cpu_us_per_request']:.0f} vs {busy['off']['cpu_us_per_request']:.0f} us"
    )
    quiet = result["idle"]
    parts.append(
        f"idle: {quiet['poll']['cpu_ms_per_s']:.2f} vs {quiet['off']['cpu_ms_per_s']:.2f} ms CPU/s"
    )
    return "busy polling on (default) vs off: " + "; ".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--blocks", type=int, default=20, help="back-to-back rounds of blocks")
    parser.add_argument("--block-size", type=int, default=100)
    parser.add_argument("--paced-requests", type=int, default=200, help="per path and pace")
    parser.add_argument("--seconds", type=float, default=3.0, help="each rps run; idle time")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bastion-poll-") as tmp, contextlib.ExitStack() as up:
        env = {**os.environ, "PYTHONPATH": str(REPO), "BASTION_UPSTREAM_API_KEY": "bench-svc"}
        upstream, _ = start_instant_upstream(up, env)
        targets = {"direct": (upstream + "/v1/chat/completions", {})}
        pids: dict[str, int] = {}
        for name, options in PROXIES.items():
            pid, url, headers = launch_bastion(up, env, upstream, Path(tmp) / name, *options)
            pids[name] = pid
            targets[name] = (url, headers)
        result = asyncio.run(run_patterns(Meter(pids), targets, args))

    print(summary(result), flush=True)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
