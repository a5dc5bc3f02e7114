"""Durability modes, group commit, and kill -9 of a real proxy under load (a short crash run).

Power loss cannot be simulated here: for "fsync" the tests check that the staging file is
fsynced before a record call returns, that concurrent records share commits and fsyncs, and that
a failed fsync fails closed.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
from collections.abc import Awaitable
from pathlib import Path

import pytest

from audit_proxy import merkle
from audit_proxy.checkpoints import Signer
from audit_proxy.config import ConfigError, load_config
from audit_proxy.staging import read_staged
from audit_proxy.store import AuditStore, AuditStoreUnavailable, Durability

from .records import record_outcome, record_pair, record_request

REPO = Path(__file__).resolve().parents[2]


async def record(store: AuditStore, n: int) -> str:
    return await record_request(store, json.dumps({"prompt": f"def f{n}():"}).encode())


async def finish(store: AuditStore, request_id: str) -> None:
    await record_outcome(
        store, request_id, b'{"choices":[]}', usage=None, latency_ms=1.0, ttfb_ms=0.5
    )


@pytest.mark.parametrize("durability", ["process", "fsync"])
def test_fsync_mode_fsyncs_before_a_record_returns(tmp_path: Path, durability: Durability) -> None:
    store = AuditStore(tmp_path / "audit.sqlite3", durability=durability)
    record_pair(store)
    # Each record_pair call awaits its request, then its outcome: two fsyncs in fsync mode.
    assert store.fsyncs == (2 if durability == "fsync" else 0)
    assert len(store.leaves()) == 2
    store.close()


def test_a_failed_fsync_refuses_this_and_every_later_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = AuditStore(tmp_path / "audit.sqlite3", durability="fsync")
    record_pair(store)

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    # Fault injection at the OS boundary: the disk reports an I/O error.
    monkeypatch.setattr("audit_proxy.store.os.fdatasync", failing_fsync)
    with pytest.raises(AuditStoreUnavailable, match="cannot be fsynced"):
        record_pair(store)
    monkeypatch.undo()
    # The kernel may have dropped the pages that failed: no later fsync is trusted.
    with pytest.raises(AuditStoreUnavailable, match="cannot be fsynced"):
        record_pair(store)
    store.close()


def test_durability_is_a_config_key_with_a_clear_error(tmp_path: Path) -> None:
    assert load_config(overrides={"durability": "fsync"}).durability == "fsync"
    assert load_config().durability == "process"
    config = tmp_path / "proxy.toml"
    config.write_text('durability = "disk"\n')
    with pytest.raises(ConfigError, match=r"proxy\.toml: durability: .*'process' or 'fsync'"):
        load_config(config)


@pytest.mark.parametrize("durability", ["process", "fsync"])
def test_concurrent_records_share_commits_in_leaf_order(
    tmp_path: Path, durability: Durability
) -> None:
    signer = Signer.load_or_create(tmp_path)
    store = AuditStore(tmp_path / "audit.sqlite3", signer, durability=durability)
    n = 64

    async def burst() -> list[str]:
        ids = await asyncio.gather(*(record(store, i) for i in range(n)))
        await asyncio.gather(*(finish(store, request_id) for request_id in ids))
        return list(ids)

    ids = asyncio.run(burst())
    # 128 records from 64 concurrent callers: a handful of commits (and fsyncs), not one each.
    assert store.commits < n // 4, f"{store.commits} commits: records were not grouped"
    assert store.fsyncs <= store.commits
    if durability == "fsync":
        assert store.fsyncs >= 2  # at least one for the requests, one for the outcomes
    leaves = store.leaves()
    assert [seq for seq, *_ in leaves] == list(range(2 * n))
    assert {rid for _, kind, rid, _, _ in leaves if kind == "request"} == set(ids)
    assert {rid for _, kind, rid, _, _ in leaves if kind == "outcome"} == set(ids)
    # Every outcome leaf comes after its request's leaf: the order of the leaves is commit order.
    position = {(kind, rid): seq for seq, kind, rid, _, _ in leaves}
    assert all(position[("request", i)] < position[("outcome", i)] for i in ids)
    store.close()
    reader = AuditStore(tmp_path / "audit.sqlite3")
    (checkpoint,) = reader.checkpoints()
    assert checkpoint.size == 2 * n
    assert checkpoint.root == merkle.tree_hash(reader.leaf_hashes()).hex()
    reader.close()


def test_a_bad_record_fails_alone_and_the_rest_of_its_group_commits(tmp_path: Path) -> None:
    store = AuditStore(tmp_path / "audit.sqlite3", durability="fsync")

    async def mixed() -> list[object]:
        calls: list[Awaitable[object]] = [record(store, i) for i in range(8)]
        # An outcome for a request that was never recorded breaks the foreign key.
        calls.insert(4, finish(store, "no-such-request"))
        return list(await asyncio.gather(*calls, return_exceptions=True))

    results = asyncio.run(mixed())
    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(failed) == 1 and isinstance(failed[0], AuditStoreUnavailable)
    assert "cannot write" in str(failed[0])
    assert len(store.requests()) == 8
    assert [seq for seq, *_ in store.leaves()] == list(range(8))
    store.close()


def test_a_closed_store_refuses_to_record(tmp_path: Path) -> None:
    store = AuditStore(tmp_path / "audit.sqlite3")
    record_pair(store)
    store.close()
    with pytest.raises(AuditStoreUnavailable, match="closed"):
        record_pair(store)


def test_records_a_dead_writer_left_unsigned_are_signed_at_the_next_start(
    tmp_path: Path,
) -> None:
    signer = Signer.load_or_create(tmp_path)
    unsigned = AuditStore(tmp_path / "audit.sqlite3")  # writes, but never signs (like a crash)
    record_pair(unsigned)
    unsigned.close()
    store = AuditStore(tmp_path / "audit.sqlite3", signer)
    assert [c.size for c in store.checkpoints()] == [2]
    store.close()


@pytest.mark.parametrize(("durability", "cycles"), [("process", 3), ("fsync", 1)])
def test_kill_9_under_load_loses_no_record(durability: str, cycles: int) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "crash_audit.py"), "--cycles", str(cycles),
         "--durability", durability, "--max-kill-after-s", "0.3"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    lines = done.stdout.strip().splitlines()
    assert lines, done.stderr
    assert json.loads(lines[-1]) == {"cycles": cycles, "lost": 0, "verify_failures": 0}, done.stdout
    per_cycle = [json.loads(line) for line in lines if line.startswith('{"cycle"')]
    assert len(per_cycle) == cycles
    for cycle in per_cycle:
        # The kill really cut requests in flight, and whole responses were checked.
        assert cycle["cut"] > 0 and cycle["received_whole"] > 0 and cycle["seen_upstream"] > 0
    assert done.returncode == 0


def test_the_staging_file_empties_under_steady_load_and_readers_see_everything(
    tmp_path: Path,
) -> None:
    store = AuditStore(tmp_path / "audit.sqlite3")
    sizes: list[int] = []

    async def steady() -> list[str]:
        ids: list[str] = []
        for _ in range(30):  # about 0.5 s of eight requests every 15 ms, never idle
            batch = await asyncio.gather(*(record(store, i) for i in range(8)))
            await asyncio.gather(*(finish(store, request_id) for request_id in batch))
            ids.extend(batch)
            sizes.append(len(read_staged(store.staging_path)))
            await asyncio.sleep(0.015)
        return ids

    ids = asyncio.run(steady())
    # Filing keeps up: the file is emptied again and again, not only when the load stops.
    emptied = sum(1 for before, after in itertools.pairwise(sizes) if after < before)
    assert emptied >= 3, sizes
    assert max(sizes) < sum(sizes) / 4, sizes
    reader = AuditStore(tmp_path / "audit.sqlite3")  # another process would open it the same way
    assert [r.id for r in reader.requests()] == ids
    assert len(reader.leaves()) == 2 * len(ids)
    reader.close()
    store.close()


def test_a_record_nothing_else_can_join_commits_without_waiting_for_a_group(
    tmp_path: Path,
) -> None:
    """With no other request open, a record commits at once (sequential traffic skips the two
    loop turns a group costs); with one open, it waits for the loop turn's group."""
    store = AuditStore(tmp_path / "audit.sqlite3")

    async def steps() -> None:
        alone = record(store, 0)
        with pytest.raises(StopIteration) as done:
            alone.send(None)  # runs to its end without yielding to the loop
        request_id = done.value.value
        assert store.commits == 1 and len(store.leaves()) == 1
        grouped = asyncio.ensure_future(record(store, 1))  # request_id is still open
        await asyncio.sleep(0)
        assert store.commits == 1, "a record another could join committed on its own"
        await grouped
        assert store.commits == 2
        await finish(store, grouped.result())
        await finish(store, request_id)

    asyncio.run(steps())
    assert [seq for seq, *_ in store.leaves()] == list(range(4))
    store.close()
