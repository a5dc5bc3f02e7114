"""How long `bastion audit export` takes with the payloads (its default), on SQLite and on
PostgreSQL: payloads read a batch of leaves at a time, next to one query per payload, side by
side in one run on the same logs.

An export with payloads opens every sealed payload (its key unwrapped, the payload decrypted),
which costs the same either way; what differs is the round trips. PostgreSQL is started by
`scripts/postgres.sh` (as for the tests) in a throwaway cluster.

    .venv/bin/python benchmarks/export_payloads.py [--records 20000] [--skip-postgres]

Prints a JSON line per store, a one-line summary, and last
`{"sqlite": {"batched_s", "per_payload_s", "speedup"}, "postgres": {...}}`.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from audit_proxy import export, verify  # noqa: E402
from audit_proxy.checkpoints import Signer  # noqa: E402
from audit_proxy.pg_store import PostgresAuditStore  # noqa: E402
from audit_proxy.store import AuditStore, StoredPayload  # noqa: E402
from tests.audit.pg_fixture import remove_cluster, start_cluster  # noqa: E402
from tests.audit.records import record_pair_async  # noqa: E402

Store = AuditStore | PostgresAuditStore
PROMPT = json.dumps({"prompt": "def parse(line):\n    " + "x = line.split(',')\n    " * 20})


def fill(store: Store, records: int) -> None:
    """`records` records (request/outcome pairs), 32 pairs in flight, with ~0.5 KB prompts."""

    async def run() -> None:
        gate = asyncio.Semaphore(32)

        async def pair(i: int) -> None:
            async with gate:
                await record_pair_async(store, f"{PROMPT} {i}".encode())

        await asyncio.gather(*(pair(i) for i in range(records // 2)))

    asyncio.run(run())
    store.close()  # signs the last checkpoint


def one_query_each(store: Store, batch: list[Any]) -> dict[tuple[str, str], StoredPayload]:
    """The payloads of a batch of leaves, read as exports did before: a query per payload."""
    return {(kind, rid): store.stored_payload(kind, rid) for _, kind, rid, _, _ in batch}


@contextmanager
def payload_reader(reader: Callable[..., dict[tuple[str, str], StoredPayload]]) -> Iterator[None]:
    batched = export.payloads_of
    export.payloads_of = reader  # type: ignore[assignment]
    try:
        yield
    finally:
        export.payloads_of = batched  # type: ignore[assignment]


def timed_exports(
    data_dir: Path, records: int, database: export.AuditDatabase | None, rounds: int = 3
) -> dict[str, float]:
    """Best of `rounds` exports each way, alternating; checks that both verify alike."""
    times: dict[str, list[float]] = {"batched_s": [], "per_payload_s": []}
    outputs: dict[str, str] = {}
    for _ in range(rounds):
        for name in times:
            out = io.StringIO()
            reader = export.payloads_of if name == "batched_s" else one_query_each
            with payload_reader(reader):
                started = time.perf_counter()
                export.export_log(data_dir, out, True, database)
                times[name].append(time.perf_counter() - started)
            outputs[name] = out.getvalue()
    # The same but for the header's export time.
    if [o.splitlines()[1:] for o in outputs.values()] != [
        outputs["batched_s"].splitlines()[1:]
    ] * 2:
        raise SystemExit("the two ways of reading payloads gave different exports")
    report = verify.verify_export(outputs["batched_s"].splitlines())
    if not report.ok or report.payloads_checked != records:
        raise SystemExit(f"the export did not verify: {report.problems[:3]}")
    best = {name: min(values) for name, values in times.items()}
    return {
        "records": records,
        "batched_s": round(best["batched_s"], 3),
        "per_payload_s": round(best["per_payload_s"], 3),
        "batched_us_per_record": round(best["batched_s"] / records * 1e6, 1),
        "per_payload_us_per_record": round(best["per_payload_s"] / records * 1e6, 1),
        "speedup": round(best["per_payload_s"] / best["batched_s"], 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bastion-export-") as tmp:
        data_dir = Path(tmp)
        signer = Signer.load_or_create(data_dir)
        fill(AuditStore(data_dir / "audit.sqlite3", signer), args.records)
        results["sqlite"] = timed_exports(data_dir, args.records, None)
        if not args.skip_postgres:
            cluster = start_cluster()
            try:
                url = cluster.new_database()
                fill(PostgresAuditStore(url, cluster.password, signer=signer), args.records)
                database = export.AuditDatabase(url, cluster.password)
                results["postgres"] = timed_exports(data_dir, args.records, database)
            finally:
                remove_cluster(cluster)
    for name, result in results.items():
        print(json.dumps({"store": name, **result}), flush=True)
    print(
        "export with payloads: "
        + "; ".join(
            f"{name} {r['batched_s']} s batched vs {r['per_payload_s']} s a query each "
            f"({r['speedup']}x)"
            for name, r in results.items()
        ),
        flush=True,
    )
    print(json.dumps({name: {k: r[k] for k in ("batched_s", "per_payload_s", "speedup")}
                      for name, r in results.items()}), flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
