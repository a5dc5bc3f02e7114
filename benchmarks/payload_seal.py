"""What sealing audit payloads costs: AES-256-GCM per payload, and the store write path with it.

For each payload size it measures, side by side in one run:

- `seal` (new key, nonce, encrypt) and `unseal`, against the SHA-256 the store already computes
  over every payload;
- `AuditStore.record_request` and the filing that seals its payload (off the request's path),
  against the same store with `seal` swapped for a pass-through (the key row is still written),
  so the ratio is the cost of encryption alone;

and then how fast `purge_payloads` shreds a store of `--purge-records` records.

    .venv/bin/python benchmarks/payload_seal.py [--sizes 1024,65536] [--rounds 2000]

Prints a JSON line per measurement, a one-line summary, and last a JSON object of µs figures.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from audit_proxy import store as store_module  # noqa: E402
from audit_proxy.payload_crypto import SealedPayload, seal, unseal  # noqa: E402
from audit_proxy.store import AuditStore  # noqa: E402
from tests.audit.records import record_request  # noqa: E402

_PASS_THROUGH_KEY = bytes(32)


def _pass_through(kind: str, record_id: str, payload: bytes) -> SealedPayload:
    return SealedPayload(_PASS_THROUGH_KEY, payload)


def per_call_us(fn: Callable[[], object], rounds: int) -> float:
    """Median over 5 runs of the mean µs per call."""
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(rounds):
            fn()
        runs.append((time.perf_counter() - start) / rounds * 1e6)
    return statistics.median(runs)


def store_write_us(payload: bytes, rounds: int, sealed: bool) -> float:
    """µs per `record_request` into a fresh store and its filing, sealing or passing payloads
    through."""
    store_module.seal = seal if sealed else _pass_through  # type: ignore[attr-defined]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            store = AuditStore(Path(tmp) / "audit.sqlite3")

            async def write() -> float:
                start = time.perf_counter()
                for _ in range(rounds):
                    await record_request(store, payload)
                store.file_staged()
                return (time.perf_counter() - start) / rounds * 1e6

            try:
                return asyncio.run(write())
            finally:
                store.close()
    finally:
        store_module.seal = seal  # type: ignore[attr-defined]


def purge_rate(records: int) -> dict[str, float]:
    """Shred `records` request payloads (1 KB each) and time it."""
    with tempfile.TemporaryDirectory() as tmp:
        store = AuditStore(Path(tmp) / "audit.sqlite3")
        payload = os.urandom(1024)

        async def fill() -> None:
            for _ in range(records):
                await record_request(store, payload)

        asyncio.run(fill())
        start = time.perf_counter()
        result = store.purge_payloads(datetime.now(UTC))
        elapsed = time.perf_counter() - start
        store.close()
    return {
        "purged": result.shredded,
        "purge_s": elapsed,
        "per_payload_us": elapsed / records * 1e6,
    }


def measure(size: int, rounds: int) -> dict[str, float]:
    """The per-payload figures for one payload size."""
    payload = os.urandom(size)
    sealed = seal("request", "r" * 32, payload)
    return {
        "size": size,
        "sha256_us": per_call_us(lambda: hashlib.sha256(payload).digest(), rounds),
        "seal_us": per_call_us(lambda: seal("request", "r" * 32, payload), rounds),
        "unseal_us": per_call_us(
            lambda: unseal("request", "r" * 32, sealed.key, sealed.stored), rounds
        ),
        **store_writes_us(payload, rounds),
    }


def store_writes_us(payload: bytes, rounds: int) -> dict[str, float]:
    """Median µs per write, plain and sealed runs alternating (after one warm-up of each)."""
    plain, sealed = [], []
    for _ in range(6):
        plain.append(store_write_us(payload, rounds, sealed=False))
        sealed.append(store_write_us(payload, rounds, sealed=True))
    return {
        "write_plain_us": statistics.median(plain[1:]),
        "write_sealed_us": statistics.median(sealed[1:]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="1024,65536", help="payload sizes in bytes")
    parser.add_argument("--rounds", type=int, default=2000, help="calls per timed run")
    parser.add_argument("--purge-records", type=int, default=5000)
    args = parser.parse_args(argv)
    summary: dict[str, float] = {}
    for size in (int(s) for s in args.sizes.split(",")):
        row = measure(size, max(50, args.rounds * 1024 // max(size, 1024)))
        row["seal_vs_sha256"] = row["seal_us"] / row["sha256_us"]
        row["write_sealed_vs_plain"] = row["write_sealed_us"] / row["write_plain_us"]
        print(json.dumps({k: round(v, 3) for k, v in row.items()}), flush=True)
        summary[f"seal_us_{size}"] = round(row["seal_us"], 2)
        summary[f"write_overhead_us_{size}"] = round(
            row["write_sealed_us"] - row["write_plain_us"], 2
        )
    purge = purge_rate(args.purge_records)
    print(json.dumps({k: round(v, 3) for k, v in purge.items()}), flush=True)
    summary["purge_us_per_payload"] = round(purge["per_payload_us"], 2)
    sizes = ", ".join(
        f"{k.rsplit('_', 1)[1]} B: seal {v} µs"
        for k, v in summary.items()
        if k.startswith("seal_us_")
    )
    print(
        f"payload sealing: {sizes}; purge {summary['purge_us_per_payload']} µs per payload",
        flush=True,
    )
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
