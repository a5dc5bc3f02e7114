"""What sharing rate limits across replicas costs: one exchange on the board, by active users.

Replicas exchange their users' running totals every `rate_limit_sync_s` (0.25 s by default),
off the request path (audit_proxy.shared_limits). This starts a private PostgreSQL cluster
(`scripts/postgres.sh`), puts three replicas' limiters on one board, and times a round of
exchanges while every replica's users take from their buckets between rounds, for 10, 100,
1,000 and 10,000 active users per replica side by side (each user changes two buckets, requests
and tokens).

    .venv/bin/python benchmarks/shared_limits.py [--rounds 40]

Prints one JSON line per size, a one-line summary, and last
`{"users_10": {"exchange_p50_ms", "exchange_p99_ms", "core_share_at_default"}, ...}`
(`core_share_at_default`: the share of one core the exchanges would take at the default
interval, from their wall time; an upper bound, since much of it is waiting on the database).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from audit_proxy.pg_store import PostgresAuditStore  # noqa: E402
from audit_proxy.ratelimit import RateLimiter  # noqa: E402
from audit_proxy.shared_limits import DEFAULT_SYNC_S, SharedLimits  # noqa: E402
from benchmarks.replicas import new_database, start_cluster, stop_cluster  # noqa: E402

SIZES = (10, 100, 1000, 10000)
REPLICAS = 3


def take_round(limiter: RateLimiter, users: int) -> None:
    for user in range(users):
        limiter.take(f"user{user}", "dev", "requests", 600, 100, 1)
        limiter.take(f"user{user}", "dev", "tokens", 60000, 8000, 120)


async def exchange_times(store: PostgresAuditStore, users: int, rounds: int) -> list[float]:
    """Milliseconds of each replica's exchange, over `rounds` rounds of all replicas."""
    replicas = [
        SharedLimits(RateLimiter(), store.usage_board(), DEFAULT_SYNC_S) for _ in range(REPLICAS)
    ]
    times: list[float] = []
    try:
        for shared in replicas:
            await shared.sync()  # joining reads the board whole: not what steady state costs
        for _ in range(rounds):
            for shared in replicas:
                take_round(shared.limiter, users)
                started = time.perf_counter()
                await shared.sync()
                times.append((time.perf_counter() - started) * 1000)
    finally:
        for shared in replicas:
            await shared.stop()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    cluster_dir = Path(tempfile.mkdtemp(prefix="bastion-pg-bench-", dir="/tmp"))
    results: dict[str, dict[str, float]] = {}
    try:
        url, password = start_cluster(cluster_dir)
        for users in SIZES:
            store = PostgresAuditStore(new_database(url, password), password)
            try:
                times = sorted(asyncio.run(exchange_times(store, users, args.rounds)))
            finally:
                store.close()
            p50 = statistics.median(times)
            row = {
                "exchange_p50_ms": round(p50, 2),
                "exchange_p99_ms": round(times[int(len(times) * 0.99)], 2),
                "core_share_at_default": round(p50 / 1000 / DEFAULT_SYNC_S, 4),
            }
            print(json.dumps({"users": users, "replicas": REPLICAS, **row}), flush=True)
            results[f"users_{users}"] = row
    finally:
        stop_cluster(cluster_dir)
    parts = ", ".join(
        f"{users} users {results[f'users_{users}']['exchange_p50_ms']} ms" for users in SIZES
    )
    print(
        f"one exchange (p50), {REPLICAS} replicas on one board: {parts}; one every "
        f"{DEFAULT_SYNC_S} s per replica by default, off the request path",
        flush=True,
    )
    print(json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
