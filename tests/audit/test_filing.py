"""When the SQLite store files its staged records: in slices, between the server's exchanges."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import time
from pathlib import Path

import pytest

from audit_proxy import merkle, verify
from audit_proxy.activity import Activity
from audit_proxy.app import build_app
from audit_proxy.checkpoints import Signer
from audit_proxy.config import load_config
from audit_proxy.metrics import METRICS
from audit_proxy.store import FILE_AFTER_S, FILE_BATCH, FILE_SLICE, FILE_WAIT_MAX_S, AuditStore
from tests.audit.records import record_pair_async


def filed(path: Path) -> int:
    """Leaves in the database, as a reader with its own SQL sees them (it files nothing)."""
    with sqlite3.connect(path) as raw:
        (count,) = raw.execute("SELECT COUNT(*) FROM leaves").fetchone()
    return int(count)


def signed(path: Path) -> list[int]:
    """The sizes of the checkpoints in the database, as a reader with its own SQL sees them."""
    with sqlite3.connect(path) as raw:
        return [int(size) for (size,) in raw.execute("SELECT size FROM checkpoints ORDER BY size")]


def exchange(activity: Activity) -> asyncio.Event:
    """An exchange in flight on `activity` until the event it returns is set."""
    end = asyncio.Event()

    async def run() -> None:
        await end.wait()

    activity.started(asyncio.create_task(run()))
    return end


async def turns(count: int = 5) -> None:
    """A few turns of the loop: an exchange's task ends, then its done callback runs."""
    for _ in range(count):
        await asyncio.sleep(0)


@pytest.fixture
def store(tmp_path: Path) -> AuditStore:
    store = AuditStore(tmp_path / "audit.sqlite3")
    store.activity = Activity()
    return store


async def test_filing_waits_while_an_exchange_is_in_flight_and_files_once_none_is(
    store: AuditStore,
) -> None:
    assert store.activity is not None
    for _ in range(3):
        await record_pair_async(store)
    in_flight = exchange(store.activity)
    await asyncio.sleep(FILE_AFTER_S * 3)  # filing is due, but the loop may be needed any moment
    assert filed(store.path) == 0
    in_flight.set()
    await turns(20)  # a few turns of the loop, no more
    assert filed(store.path) == 6
    store.close()


async def test_filing_waits_for_an_idle_server_no_longer_than_its_limit(store: AuditStore) -> None:
    assert store.activity is not None
    exchange(store.activity)  # and never ended: a stream that lasts minutes, say
    await record_pair_async(store)
    committed = time.monotonic()
    while filed(store.path) < 2:
        assert time.monotonic() - committed < FILE_AFTER_S + FILE_WAIT_MAX_S + 0.5
        await asyncio.sleep(0.01)
    assert time.monotonic() - committed >= FILE_AFTER_S + FILE_WAIT_MAX_S - 0.01
    store.close()


async def test_a_checkpoint_falls_due_on_no_request_s_path_and_filing_signs_it(
    tmp_path: Path,
) -> None:
    signer = Signer.load_or_create(tmp_path)
    store = AuditStore(tmp_path / "audit.sqlite3", signer, checkpoint_every=4)
    store.activity = Activity()
    for _ in range(3):
        await record_pair_async(store)  # the fourth record makes a checkpoint due
    # Signing then would have filed every staged record first, on that record's path.
    assert (filed(store.path), signed(store.path)) == (0, [])
    deadline = time.monotonic() + FILE_AFTER_S + FILE_WAIT_MAX_S + 2
    while filed(store.path) < 6:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    assert signed(store.path) == [4]
    store.close()
    reopened = AuditStore(tmp_path / "audit.sqlite3")
    first, last = reopened.checkpoints()
    assert (first.size, last.size) == (4, 6)  # and the last at close
    assert first.root == merkle.tree_hash(reopened.leaf_hashes()[:4]).hex()
    assert verify.checkpoint_signed(first.as_dict(), signer.public_key)
    reopened.close()


async def test_filing_goes_in_slices_with_the_loop_free_between_them(store: AuditStore) -> None:
    records = 2 * (3 * FILE_SLICE + 2)  # well under FILE_BATCH: no burst
    assert records < FILE_BATCH
    for _ in range(records // 2):
        await record_pair_async(store)
    loop = asyncio.get_running_loop()
    seen: list[int] = []
    done = loop.create_future()

    def each_turn() -> None:
        seen.append(filed(store.path))
        if seen[-1] < records:
            loop.call_soon(each_turn)
        else:
            done.set_result(None)

    filed_before = METRICS.audit_filed.value()
    slices_before = METRICS.audit_filing_seconds.count()
    loop.call_soon(each_turn)
    await asyncio.wait_for(done, 5)
    steps = [after - before for before, after in itertools.pairwise(seen) if after > before]
    assert sum(steps) == records
    assert max(steps) <= FILE_SLICE, steps
    assert len(steps) >= records // FILE_SLICE, steps
    # Operators see it too: what was filed, and how long the loop spent on each slice.
    assert METRICS.audit_filed.value() - filed_before == records
    assert METRICS.audit_filing_seconds.count() - slices_before >= len(steps)
    store.close()


async def test_a_burst_is_filed_at_once_even_while_exchanges_are_in_flight(
    store: AuditStore,
) -> None:
    assert store.activity is not None
    exchange(store.activity)
    started = time.monotonic()
    for _ in range(FILE_BATCH // 2):
        await record_pair_async(store)
    while filed(store.path) < FILE_BATCH:
        assert time.monotonic() - started < FILE_WAIT_MAX_S, "a burst waited for an idle server"
        await asyncio.sleep(0.005)
    store.close()


async def test_activity_calls_back_once_no_exchange_is_in_flight() -> None:
    activity = Activity()
    calls: list[str] = []
    activity.when_idle(lambda: calls.append("idle at once"))
    await turns()
    assert calls == ["idle at once"]
    first, second = exchange(activity), exchange(activity)
    assert activity.in_flight == 2
    activity.when_idle(lambda: calls.append("after both"))
    first.set()
    await turns()
    assert calls == ["idle at once"]
    second.set()
    await turns()
    assert calls == ["idle at once", "after both"]
    exchange(activity).set()
    await turns()
    assert calls == ["idle at once", "after both"]  # once only
    assert activity.in_flight == 0


def test_the_proxy_files_between_the_exchanges_its_server_counts(tmp_path: Path) -> None:
    app = build_app(load_config(None, {"data_dir": tmp_path}, environ={}))
    try:
        assert isinstance(app.store, AuditStore)
        assert app.store.activity is app.activity
    finally:
        app.store.close()
        app.keys.close()
