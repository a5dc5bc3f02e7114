"""How exporting and verifying the audit log grow with its size: linear, or worse?

A proxy signs a checkpoint every 1,000 records or every 10 s, so a quiet deployment leaves about
one checkpoint per few records, and a year's log holds millions of records and checkpoints. Each
checkpoint in an export carries a consistency proof from the one before, and the verifier checks
every checkpoint's root; if either costs time in proportion to the log, the whole export or
verify grows with records x checkpoints.

For each size it writes a real SQLite audit log (`AuditStore`, a checkpoint every
`--checkpoint-every` records), then times `bastion audit export` and `verify` (in process), side
by side in one run, and reports the time per record; `per_record_growth` is the per-record time
of the largest log over that of the smallest (about 1 when the cost is linear, the size ratio
when it is quadratic).

It also times what a proxy's start costs on that log (opening the store as its writer, which
needs the Merkle frontier): from the frontier the last checkpoint saved, and again with that
saved frontier deleted (every leaf hash read, as before it was saved). And one inclusion proof
(`bastion audit prove`, the admin route): the first, which computes and keeps the tile hashes;
the next, from the kept tiles; and one from every leaf hash, as proofs were made before tiles.

    .venv/bin/python benchmarks/audit_log_scale.py [--sizes 4000,32000] [--checkpoint-every 50]

Prints a JSON line per size, a one-line summary, and last
`{"sizes": [...], "export_s": [...], "verify_s": [...], "open_s": [...],
"open_without_saved_frontier_s": [...], "prove_s": [...], "prove_from_all_leaves_s": [...],
"per_record_growth": {"export", "verify"}}`.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from audit_proxy import export, merkle, verify  # noqa: E402
from audit_proxy.checkpoints import Signer  # noqa: E402
from audit_proxy.store import AuditStore  # noqa: E402
from tests.audit.records import record_pair_async  # noqa: E402


def write_log(data_dir: Path, records: int, checkpoint_every: int) -> int:
    """A log of `records` records (request/outcome pairs); returns its checkpoint count."""
    store = AuditStore(data_dir / "audit.sqlite3", Signer.load_or_create(data_dir), 10**9)

    async def fill() -> None:
        for i in range(records // 2):
            await record_pair_async(store, json.dumps({"prompt": f"def f{i}():"}).encode())
            if (2 * (i + 1)) % checkpoint_every == 0:
                store.checkpoint()

    asyncio.run(fill())
    store.close()
    return _count_checkpoints(data_dir)


def _count_checkpoints(data_dir: Path) -> int:
    reader = AuditStore(data_dir / "audit.sqlite3")
    try:
        return len(reader.checkpoints())
    finally:
        reader.close()


def measure(records: int, checkpoint_every: int) -> dict[str, float | int]:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        checkpoints = write_log(data_dir, records, checkpoint_every)
        out = io.StringIO()
        started = time.perf_counter()
        export.export_log(data_dir, out, payloads=False)
        export_s = time.perf_counter() - started
        lines = out.getvalue().splitlines()
        started = time.perf_counter()
        report = verify.verify_export(lines)
        verify_s = time.perf_counter() - started
        if not report.ok or report.records != records:
            raise SystemExit(f"the log of {records} records did not verify: {report.problems[:3]}")
        proofs = time_proofs(data_dir, records // 2)
        open_s = time_open(data_dir)
        conn = sqlite3.connect(data_dir / "audit.sqlite3")
        conn.execute("DELETE FROM frontier")
        conn.commit()
        conn.close()
        open_unsaved_s = time_open(data_dir)
    return {
        "records": records,
        "checkpoints": checkpoints,
        "export_s": round(export_s, 3),
        "verify_s": round(verify_s, 3),
        "export_us_per_record": round(export_s / records * 1e6, 1),
        "verify_us_per_record": round(verify_s / records * 1e6, 1),
        **proofs,
        "open_s": round(open_s, 4),
        "open_without_saved_frontier_s": round(open_unsaved_s, 4),
    }


def time_proofs(data_dir: Path, seq: int) -> dict[str, float]:
    """Seconds for an inclusion proof of `seq`: first (tiles made), next, and from all leaves."""
    times: dict[str, float] = {}
    for name in ("prove_first_s", "prove_s"):
        started = time.perf_counter()
        proof = export.inclusion_proof(data_dir, seq)
        times[name] = round(time.perf_counter() - started, 4)
        if verify.verify_proof(proof) is not None:
            raise SystemExit(f"the proof of record {seq} did not verify")
    reader = AuditStore(data_dir / "audit.sqlite3")
    try:
        started = time.perf_counter()
        size = reader.signed_checkpoint().size  # type: ignore[union-attr]
        merkle.inclusion_proof(reader.leaf_hashes(size), seq)
        times["prove_from_all_leaves_s"] = round(time.perf_counter() - started, 4)
    finally:
        reader.close()
    return times


def time_open(data_dir: Path) -> float:
    """Seconds to open the store as a proxy does at start (median of three)."""
    times = []
    for _ in range(3):
        started = time.perf_counter()
        store = AuditStore(data_dir / "audit.sqlite3", Signer.load(data_dir))
        times.append(time.perf_counter() - started)
        store.close()
    return sorted(times)[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", default="4000,32000", help="log sizes in records, comma-separated"
    )
    parser.add_argument("--checkpoint-every", type=int, default=50, help="records per checkpoint")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    rows = []
    for size in sizes:
        row = measure(size, args.checkpoint_every)
        print(json.dumps(row), flush=True)
        rows.append(row)
    small, large = rows[0], rows[-1]
    growth = {
        step: round(
            float(large[f"{step}_us_per_record"]) / float(small[f"{step}_us_per_record"]), 2
        )
        for step in ("export", "verify")
    }
    print(
        f"{large['records']} records, {large['checkpoints']} checkpoints: export "
        f"{large['export_s']} s, verify {large['verify_s']} s; per-record time grew "
        f"{growth['export']}x (export) and {growth['verify']}x (verify) from "
        f"{small['records']} records ({large['records'] // small['records']}x the size); "
        f"a proxy opens it in {large['open_s']} s ({large['open_without_saved_frontier_s']} s "
        f"without the saved frontier); a proof takes {large['prove_s']} s "
        f"({large['prove_first_s']} s the first time, {large['prove_from_all_leaves_s']} s from "
        "every leaf hash)"
    )
    print(
        json.dumps(
            {
                "sizes": sizes,
                "export_s": [r["export_s"] for r in rows],
                "verify_s": [r["verify_s"] for r in rows],
                "open_s": [r["open_s"] for r in rows],
                "prove_s": [r["prove_s"] for r in rows],
                "prove_from_all_leaves_s": [r["prove_from_all_leaves_s"] for r in rows],
                "open_without_saved_frontier_s": [r["open_without_saved_frontier_s"] for r in rows],
                "per_record_growth": growth,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
