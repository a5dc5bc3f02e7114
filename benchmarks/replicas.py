"""What the serialized append costs on PostgreSQL: `record_request` latency, side by side.

One run starts a private PostgreSQL cluster (`scripts/postgres.sh`, default settings: fsync and
synchronous_commit on) and times `record_request` end to end (enqueue, group commit under
`pg_advisory_xact_lock`, MAX(seq)+1, row + leaf, COMMIT, future resolved) in these setups:

- `pg` at 1 and 16 concurrent callers, one store (one replica);
- `pg_3_replicas`: three processes, each a store with 16 concurrent callers, on one database:
  the lock is contended across replicas;
- `raw_unserialized` / `raw_serialized`: one caller, plain psycopg, one transaction per record:
  row + leaf, without and with the lock and MAX(seq) (the difference is what serialization
  itself costs; the store's own overhead is `pg c=1` minus `raw_serialized`);
- `sqlite` at 1 and 16 concurrent callers (the embedded store, "process" durability) for scale.

    .venv/bin/python benchmarks/replicas.py [--requests 2000]

Prints one JSON line per setup, a one-line summary, and last
`{"pg_c1": {"p50_ms", "p99_ms", "rps"}, "pg_c16": {..}, "sqlite_c1": {..}, "sqlite_c16": {..},
"raw_unserialized_c1": {..}, "raw_serialized_c1": {..}, "pg_3x16": {..}, "lock_cost_c1_ms": ..}`.
The single-process setups run interleaved in 5 rounds (the raw pair alternates record by
record) so that the load of a shared machine hits them alike; the 3-replica run comes after.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402
from psycopg.rows import TupleRow  # noqa: E402

from audit_proxy.pg_migrations import APPEND_LOCK  # noqa: E402
from audit_proxy.pg_store import PostgresAuditStore  # noqa: E402
from audit_proxy.store import AuditStore  # noqa: E402
from tests.audit.records import record_request  # noqa: E402

BODY = json.dumps({"model": "tiny", "prompt": "def add(a, b):", "max_tokens": 16}).encode()
DIGEST = hashlib.sha256(BODY).hexdigest()
ROUNDS = 5
Store = PostgresAuditStore | AuditStore


def start_cluster(directory: Path) -> tuple[str, str]:
    env = {**os.environ, "BASTION_PG_DIR": str(directory)}
    url = subprocess.run(
        ["bash", str(REPO / "scripts" / "postgres.sh"), "start"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return url, (directory / "password").read_text().strip()


def stop_cluster(directory: Path) -> None:
    env = {**os.environ, "BASTION_PG_DIR": str(directory)}
    subprocess.run(["bash", str(REPO / "scripts" / "postgres.sh"), "stop"], env=env, check=False)
    shutil.rmtree(directory, ignore_errors=True)


def new_database(url: str, password: str) -> str:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, password=password, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    return url.rsplit("/", 1)[0] + "/" + name


async def _timed(store: Store, total: int, concurrency: int) -> list[float]:
    latencies: list[float] = []
    per_worker = total // concurrency

    async def worker() -> None:
        for _ in range(per_worker):
            started = time.perf_counter()
            await record_request(store, BODY)
            latencies.append((time.perf_counter() - started) * 1000)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def _replica(args: tuple[str, str, int, int]) -> tuple[list[float], float]:
    """In a process of its own: one replica's store, `total` calls; (latencies, seconds)."""
    url, password, total, concurrency = args
    store = PostgresAuditStore(url, password)
    try:
        asyncio.run(_timed(store, 64, 16))
        started = time.perf_counter()
        return asyncio.run(_timed(store, total, concurrency)), time.perf_counter() - started
    finally:
        store.close()


def raw_record(conn: psycopg.Connection[TupleRow], serialized: bool, i: int) -> float:
    """Row + leaf in a plain transaction, with or without the lock and MAX(seq); ms."""
    started = time.perf_counter()
    request_id = uuid.uuid4().hex
    with conn.transaction():
        seq = 1_000_000 + i
        if serialized:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))
            row = conn.execute("SELECT COALESCE(MAX(seq), -1) + 1 FROM leaves").fetchone()
            seq = int(row[0]) if row else 0
        conn.execute(
            'INSERT INTO requests (id, received_at, "user", role, client, method, route,'
            " feature, model, stream, body_sha256, body_size, body, policy)"
            " VALUES (%s,%s,'bench','user',NULL,'POST','/v1/completions','completion',"
            " 'tiny',0,%s,%s,%s,NULL) RETURNING *",
            (request_id, datetime.now(UTC).isoformat(), DIGEST, len(BODY), BODY),
        ).fetchone()
        conn.execute(
            "INSERT INTO leaves (seq, kind, record_id, leaf_hash, canonical)"
            " VALUES (%s,'request',%s,%s,%s)",
            (seq, request_id, b"\0" * 32, b"{}"),
        )
    return (time.perf_counter() - started) * 1000


def summary(name: str, latencies: list[float], wall_s: float) -> dict[str, Any]:
    ordered = sorted(latencies)
    result = {
        "setup": name,
        "requests": len(ordered),
        "p50_ms": round(statistics.median(ordered), 3),
        "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1], 3),
        "rps": round(len(ordered) / wall_s),
    }
    print(json.dumps(result), flush=True)
    return result


def interleaved(url: str, password: str, tmp: Path, total: int) -> dict[str, dict[str, Any]]:
    """The single-process setups, in rounds, so that load drift hits them all alike."""
    stores: dict[str, tuple[Store, int]] = {
        "pg_c1": (PostgresAuditStore(new_database(url, password), password), 1),
        "pg_c16": (PostgresAuditStore(new_database(url, password), password), 16),
        "sqlite_c1": (AuditStore(tmp / "c1.sqlite3"), 1),
        "sqlite_c16": (AuditStore(tmp / "c16.sqlite3"), 16),
    }
    raw_dbs = {False: new_database(url, password), True: new_database(url, password)}
    conns = {}
    for serialized, db in raw_dbs.items():
        PostgresAuditStore(db, password).close()  # the schema
        conns[serialized] = psycopg.connect(db, password=password, autocommit=True)
    latencies: dict[str, list[float]] = {}
    seconds: dict[str, float] = {}
    try:
        for store, concurrency in stores.values():
            asyncio.run(_timed(store, 64, concurrency))  # warm up
        chunk = total // ROUNDS
        numbers = itertools.count()
        for _ in range(ROUNDS):
            for name, (store, concurrency) in stores.items():
                started = time.perf_counter()
                latencies.setdefault(name, []).extend(
                    asyncio.run(_timed(store, chunk, concurrency))
                )
                seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started
            for _ in range(chunk):
                # Alternate record by record: the pair sees the same moment of the machine.
                for serialized in (False, True):
                    name = "raw_serialized_c1" if serialized else "raw_unserialized_c1"
                    ms = raw_record(conns[serialized], serialized, next(numbers))
                    latencies.setdefault(name, []).append(ms)
                    seconds[name] = seconds.get(name, 0.0) + ms / 1000
    finally:
        for store, _ in stores.values():
            store.close()
        for conn in conns.values():
            conn.close()
    return {name: summary(name, values, seconds[name]) for name, values in latencies.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    total = args.requests
    cluster_dir = Path(tempfile.mkdtemp(prefix="bastion-pg-bench-", dir="/tmp"))
    tmp = Path(tempfile.mkdtemp(prefix="bastion-bench-"))
    try:
        url, password = start_cluster(cluster_dir)
        results = interleaved(url, password, tmp, total)
        db = new_database(url, password)
        PostgresAuditStore(db, password).close()  # migrate once, before the replicas race
        with multiprocessing.get_context("spawn").Pool(3) as pool:
            parts = pool.map(_replica, [(db, password, total, 16)] * 3)
        results["pg_3x16"] = summary(
            "pg_3_replicas_x_c16",
            [x for latencies, _ in parts for x in latencies],
            max(wall for _, wall in parts),
        )
    finally:
        stop_cluster(cluster_dir)
        shutil.rmtree(tmp, ignore_errors=True)
    final: dict[str, Any] = {
        k: {m: v[m] for m in ("p50_ms", "p99_ms", "rps")} for k, v in results.items()
    }
    final["lock_cost_c1_ms"] = round(
        results["raw_serialized_c1"]["p50_ms"] - results["raw_unserialized_c1"]["p50_ms"], 3
    )
    print(
        f"record_request on PostgreSQL: p50/p99 {final['pg_c1']['p50_ms']}/"
        f"{final['pg_c1']['p99_ms']} ms at c=1, {final['pg_c16']['p50_ms']}/"
        f"{final['pg_c16']['p99_ms']} ms at c=16 ({final['pg_c16']['rps']} rec/s), "
        f"3 replicas x16: {final['pg_3x16']['p50_ms']}/{final['pg_3x16']['p99_ms']} ms "
        f"({final['pg_3x16']['rps']} rec/s); the lock + MAX(seq) add {final['lock_cost_c1_ms']} "
        f"ms p50 at c=1; SQLite c=1 p50 {final['sqlite_c1']['p50_ms']} ms",
        flush=True,
    )
    print(json.dumps(final))


if __name__ == "__main__":
    main()
