"""What filing an audit record into SQLite costs as the log grows: time-ordered record ids (the
product's UUIDv7s) against uniformly random ones (the ids before them), side by side in one run.

Records are committed to the staging file on the request's path and filed into the tables later,
`FILE_SLICE` at a time (see `audit_proxy.store`). Four of the tables' indexes are keyed by record
id. With random ids every new record lands on a page anywhere in each of those trees: once the
trees outgrow SQLite's page cache, each filing reads pages back and writes more of them. Ids
that begin with their time go to the trees' right edge, like sequence numbers.

Two stores are filled in turns, a window of `--window` request/outcome pairs each, through the
store's own API (`record_request`, `record_outcome`); each store files its records in slices of
`FILE_SLICE`, timed. At each size in `--sizes` (records per store) it reports, for each kind of
id: filing microseconds per record over the last window, and bytes SQLite read and wrote
while filing, per record (from /proc/self/io: the WAL is copied into the database between
windows, untimed, as the proxy's thread for it does every 0.5 s), and at the end the size of each
database (its WAL copied in).

    .venv/bin/python benchmarks/audit_filing.py [--sizes 20000,100000,300000] [--window 2000]

Prints a JSON line per size, a one-line summary, and last
`{"sizes": [...], "ordered": {"file_us_per_record": [...], "read_kib_per_record": [...],
"written_kib_per_record": [...], "db_mib"}, "random": {...},
"random_over_ordered_file_us": [...]}`.
Not a product configuration: the random ids exist only inside this script.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from audit_proxy import store as store_module  # noqa: E402
from audit_proxy.store import FILE_SLICE, AuditStore  # noqa: E402
from tests.audit.records import record_outcome, record_request  # noqa: E402

ORDERED = "ordered"
RANDOM = "random"
ID_MAKERS: dict[str, Callable[[], str]] = {
    ORDERED: store_module.new_record_id,
    RANDOM: lambda: os.urandom(16).hex(),
}


def io_bytes() -> tuple[int, int]:
    """(bytes read, bytes written) by this process's file I/O so far, page cache or not."""
    counters = dict(
        line.split(": ") for line in Path("/proc/self/io").read_text().splitlines() if ": " in line
    )
    return int(counters["rchar"]), int(counters["wchar"])


@dataclass
class Side:
    """One store and what its last window of filing cost."""

    name: str
    store: AuditStore
    records: int = 0
    file_s: float = 0.0
    read: int = 0
    written: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)

    async def window(self, pairs: int) -> None:
        """Record `pairs` request/outcome pairs, filing every FILE_SLICE records, timed."""
        self.file_s, self.read, self.written = 0.0, 0, 0
        store_module.new_record_id = ID_MAKERS[self.name]
        for i in range(pairs):
            prompt = json.dumps({"prompt": f"def f{self.records + i}(x):\n    return x"}).encode()
            await record_outcome(self.store, await record_request(self.store, prompt))
            if (2 * (i + 1)) % FILE_SLICE == 0:
                self._file_slice()
        self.records += 2 * pairs

    def _file_slice(self) -> None:
        # The writer's own slice, as `AuditStore._file_some` takes it on the event loop.
        read, written = io_bytes()
        started = time.perf_counter()
        with self.store._lock:
            self.store._file_own_batch(FILE_SLICE)
        self.file_s += time.perf_counter() - started
        read_after, written_after = io_bytes()
        self.read += read_after - read
        self.written += written_after - written

    def report(self, filed: int) -> dict[str, float]:
        figures = {
            "file_us_per_record": round(self.file_s / filed * 1e6, 1),
            "read_kib_per_record": round(self.read / filed / 1024, 2),
            "written_kib_per_record": round(self.written / filed / 1024, 2),
        }
        for key, value in figures.items():
            self.history.setdefault(key, []).append(value)
        return figures


def database_mib(path: Path) -> float:
    """The database's size once its WAL is copied in."""
    checkpoint_wal(path)
    return round(path.stat().st_size / 2**20, 1)


def quiet_background() -> None:
    """Filing and WAL checkpoints happen only where this script says: filing timed, each
    checkpoint between two windows, untimed (the proxy's run on a thread of their own)."""
    AuditStore._schedule_filing = lambda self: None  # type: ignore[method-assign]
    AuditStore._checkpoint_wal = lambda self: None  # type: ignore[method-assign]


def checkpoint_wal(path: Path) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        conn.close()


def side_summary(name: str, figures: dict[str, Any]) -> str:
    """One kind of id's figures at the largest size, for the summary line."""
    return (
        f"{name} ids {figures['file_us_per_record'][-1]} us, "
        f"{figures['written_kib_per_record'][-1]} KiB written, "
        f"{figures['read_kib_per_record'][-1]} KiB read, database {figures['db_mib']} MiB"
    )


async def run(sizes: list[int], window: int, tmp: Path) -> dict[str, Any]:
    quiet_background()
    sides = []
    for name in (ORDERED, RANDOM):
        (tmp / name).mkdir()
        sides.append(Side(name, AuditStore(tmp / name / "audit.sqlite3", checkpoint_every=10**9)))
    try:
        for size in sizes:
            while sides[0].records < size:
                pairs = min(window, (size - sides[0].records) // 2) or 1
                for side in sides:
                    await side.window(pairs)
                    checkpoint_wal(side.store.path)
            line = {"records": size, **{s.name: s.report(2 * pairs) for s in sides}}
            print(json.dumps(line), flush=True)
    finally:
        store_module.new_record_id = ID_MAKERS[ORDERED]
        for side in sides:
            side.store.close()
    result: dict[str, Any] = {"sizes": sizes}
    for side in sides:
        result[side.name] = {**side.history, "db_mib": database_mib(side.store.path)}
    ordered, random_ = (s.history["file_us_per_record"] for s in sides)
    result["random_over_ordered_file_us"] = [
        round(r / o, 2) for r, o in zip(random_, ordered, strict=True)
    ]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--sizes", default="20000,100000,300000", help="records per store at each report"
    )
    parser.add_argument("--window", type=int, default=2000, help="pairs per turn of each store")
    args = parser.parse_args()
    sizes = sorted(int(size) for size in args.sizes.split(","))
    with tempfile.TemporaryDirectory(prefix="bastion-filing-") as tmp:
        result = asyncio.run(run(sizes, args.window, Path(tmp)))
    print(
        f"filing per record at {sizes[-1]} records: "
        + "; ".join(side_summary(name, result[name]) for name in (ORDERED, RANDOM)),
        flush=True,
    )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
