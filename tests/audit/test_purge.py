"""Sealed payloads and `bastion audit purge`: shredded payloads are gone, the log stays provable."""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from audit_proxy.checkpoints import Signer
from audit_proxy.payload_crypto import PayloadSealError, unseal
from audit_proxy.pg_store import PostgresAuditStore
from audit_proxy.store import AuditStore, AuditStoreUnavailable
from bastion.audit_commands import purge_cutoff
from tests.audit.cli import bastion
from tests.audit.records import a_moment_after_now, record_pair
from tests.proxy.conftest import start_proxy, stop_proxy
from tests.proxy.fake_upstream import FakeUpstream

CANARY = b"canary-7f3a91-do-not-keep"


def record(store: AuditStore, prompt: bytes, answer: bytes = b'{"text":"ok"}') -> str:
    """One request and its outcome, filed into the tables the raw SQL below reads."""
    request_id = record_pair(store, prompt, answer)
    store.file_staged()
    return request_id


def on_disk(data_dir: Path) -> bytes:
    """Every byte of the audit database's files: the database, its -wal and -shm."""
    return b"".join(
        path.read_bytes() for path in sorted(data_dir.glob("audit.sqlite3*")) if path.is_file()
    )


def key_of(data_dir: Path, kind: str, record_id: str) -> bytes:
    raw = sqlite3.connect(data_dir / "audit.sqlite3")
    try:
        (key,) = raw.execute(
            "SELECT key FROM payload_keys WHERE kind = ? AND record_id = ?", (kind, record_id)
        ).fetchone()
    finally:
        raw.close()
    assert isinstance(key, bytes) and len(key) == 32
    return key


def check_batched_payload_reads(
    store: AuditStore | PostgresAuditStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store's `stored_payloads` reads many records' payloads (in chunks) as `stored_payload`
    reads one each: shredded ones flagged, unknown ids left out. Purges the oldest pair."""
    monkeypatch.setattr(f"{type(store).__module__}.PAYLOAD_READ_BATCH", 3)
    old = record_pair(store, b'{"prompt": "old"}')
    cutoff = a_moment_after_now()
    ids = [old] + [record_pair(store, f'{{"prompt": "p{i}"}}'.encode()) for i in range(6)]
    assert store.purge_payloads(cutoff).shredded == 2
    for kind in ("request", "outcome"):
        batched = store.stored_payloads(kind, [*ids, "no-such-record"])
        assert set(batched) == set(ids)
        assert batched == {record_id: store.stored_payload(kind, record_id) for record_id in ids}
        assert batched[old].shredded and batched[old].data is None
        assert all(batched[i].data for i in ids[1:])
    assert store.stored_payloads("request", [ids[3]])[ids[3]].data == b'{"prompt": "p2"}'


def test_many_payloads_are_read_in_chunks_as_one_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = AuditStore(tmp_path / "audit.sqlite3", Signer.load_or_create(tmp_path))
    check_batched_payload_reads(store, monkeypatch)
    store.close()


def test_payloads_are_sealed_on_disk_and_read_back_in_clear(tmp_path: Path) -> None:
    store = AuditStore(tmp_path / "audit.sqlite3")
    request_id = record(store, b'{"prompt":"' + CANARY + b'"}', b'{"text":"' + CANARY + b'"}')
    files = on_disk(tmp_path)
    assert (tmp_path / "audit.sqlite3-wal").stat().st_size > 0
    assert CANARY not in files, "a payload was stored in clear"
    assert key_of(tmp_path, "request", request_id) != key_of(tmp_path, "outcome", request_id)
    assert CANARY in (store.requests()[0].body or b"")
    assert CANARY in (store.outcomes()[0].response_body or b"")
    assert store.payload("request", request_id) == b'{"prompt":"' + CANARY + b'"}'
    store.close()


def test_payload_keys_are_wrapped_under_the_signing_key_beside_the_store(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    signer = Signer.load_or_create(data_dir)
    store = AuditStore(data_dir / "audit.sqlite3", signer)
    request_id = record(store, b"wrapped " + CANARY)
    store.close()
    raw = sqlite3.connect(data_dir / "audit.sqlite3")
    (stored_key,) = raw.execute(
        "SELECT key FROM payload_keys WHERE kind = 'request' AND record_id = ?", (request_id,)
    ).fetchone()
    (sealed,) = raw.execute("SELECT body FROM requests WHERE id = ?", (request_id,)).fetchone()
    raw.close()
    assert len(stored_key) == 41  # 32 bytes wrapped (RFC 3394), behind a format byte
    with pytest.raises(PayloadSealError):
        unseal("request", request_id, stored_key[1:33], sealed)
    # Any store opened in the data dir (a reader, the export, purge) unwraps with the key there.
    reader = AuditStore(data_dir / "audit.sqlite3")
    assert reader.payload("request", request_id) == b"wrapped " + CANARY
    reader.close()
    # The database alone opens no payload; beside another signing key, neither.
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(data_dir / "audit.sqlite3", copy / "audit.sqlite3")
    alone = AuditStore(copy / "audit.sqlite3")
    with pytest.raises(AuditStoreUnavailable, match="wrapped under the proxy's signing key"):
        alone.payload("request", request_id)
    assert len(alone.leaves()) == 2  # the log itself needs no key
    alone.close()
    Signer.load_or_create(copy)
    with pytest.raises(AuditStoreUnavailable, match="does not unwrap"):
        AuditStore(copy / "audit.sqlite3").requests()


def test_a_ciphertext_moved_to_another_record_does_not_open(tmp_path: Path) -> None:
    store = AuditStore(tmp_path / "audit.sqlite3")
    first, second = record(store, b"first prompt"), record(store, b"second prompt")
    raw = sqlite3.connect(tmp_path / "audit.sqlite3")
    (body,) = raw.execute("SELECT body FROM requests WHERE id = ?", (first,)).fetchone()
    # Move both the ciphertext and its key: only the associated data still ties them to `first`.
    (key,) = raw.execute(
        "SELECT key FROM payload_keys WHERE kind = 'request' AND record_id = ?", (first,)
    ).fetchone()
    raw.execute("UPDATE requests SET body = ? WHERE id = ?", (body, second))
    raw.execute(
        "UPDATE payload_keys SET key = ? WHERE kind = 'request' AND record_id = ?", (key, second)
    )
    raw.commit()
    raw.close()
    assert store.payload("request", first) == b"first prompt"
    with pytest.raises(AuditStoreUnavailable, match=f"payload of request {second} does not open"):
        store.payload("request", second)
    store.close()


def test_purge_shreds_exactly_the_older_records(tmp_path: Path) -> None:
    store = AuditStore(tmp_path / "audit.sqlite3")
    old = [record(store, f"old prompt {i}".encode()) for i in range(5)]
    cutoff = a_moment_after_now()
    new = [record(store, f"new prompt {i}".encode()) for i in range(3)]
    store.close()

    done = bastion("audit", "purge", "--before", cutoff.isoformat(), "--data-dir", str(tmp_path))
    assert done.returncode == 2, "without --yes and without a terminal it must not purge"
    assert "would shred 10 payloads" in done.stderr and "--yes" in done.stderr

    args = ("audit", "purge", "--before", cutoff.isoformat(), "--data-dir", str(tmp_path), "--yes")
    done = bastion(*args)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("shredded 10 payloads of records received before")

    store = AuditStore(tmp_path / "audit.sqlite3")
    for request_id in old:
        assert store.payload("request", request_id) is None
        assert store.payload("outcome", request_id) is None
        assert store.stored_payload("outcome", request_id).shredded
    for i, request_id in enumerate(new):
        assert store.payload("request", request_id) == f"new prompt {i}".encode()
        assert store.payload("outcome", request_id) == b'{"text":"ok"}'
    bodies = [r.body for r in store.requests()]
    assert bodies == [None] * 5 + [f"new prompt {i}".encode() for i in range(3)]
    assert [o.response_body is None for o in store.outcomes()] == [True] * 5 + [False] * 3
    store.close()

    again = bastion(*args)
    assert again.returncode == 0 and again.stdout.startswith("shredded 0 payloads")


def test_after_purge_the_export_verifies_and_a_shredded_record_proves(tmp_path: Path) -> None:
    store = AuditStore(tmp_path / "audit.sqlite3", Signer.load_or_create(tmp_path), 4)
    for i in range(4):
        record(store, f"old {i}".encode())
    cutoff = a_moment_after_now()
    for i in range(2):
        record(store, f"new {i}".encode())
    store.close()  # signs the last checkpoint (size 12)
    common = ("--data-dir", str(tmp_path))
    assert (
        bastion("audit", "purge", "--before", cutoff.isoformat(), *common, "--yes").returncode == 0
    )

    out = tmp_path / "export.jsonl"
    assert bastion("audit", "export", str(out), *common).returncode == 0
    leaves = [e for e in map(json.loads, out.read_text().splitlines()) if e["type"] == "leaf"]
    assert [e.get("payload_shredded", False) for e in leaves] == [True] * 8 + [False] * 4
    assert all(e["payload"] is None for e in leaves[:8])
    assert all(e["payload"] is not None for e in leaves[8:])
    checked = bastion("audit", "verify", str(out))
    assert checked.returncode == 0, checked.stdout
    assert checked.stdout.startswith(
        "OK: 12 records, 3 checkpoints (signed through size 12), 4 payloads checked, "
        "8 shredded by a purge\n"
    )

    proof = bastion("audit", "prove", "1", *common)  # the outcome of the first request
    assert proof.returncode == 0, proof.stderr
    doc = json.loads(proof.stdout)
    assert (doc["kind"], doc["record_id"]) == ("outcome", leaves[0]["record"]["id"])
    verified = bastion("audit", "verify-proof", "-", stdin=proof.stdout)
    assert verified.returncode == 0 and verified.stdout.startswith("OK: record seq 1 is in")


def test_purge_leaves_no_copy_of_a_shredded_key_in_the_files(tmp_path: Path) -> None:
    store = AuditStore(tmp_path / "audit.sqlite3")
    canary_id = record(store, CANARY, CANARY)
    keys = [key_of(tmp_path, kind, canary_id) for kind in ("request", "outcome")]
    cutoff = a_moment_after_now()
    kept = record(store, b"kept")
    kept_key = key_of(tmp_path, "request", kept)
    # Before: the keys are in the files (in the -wal file, where the writer put them).
    files = on_disk(tmp_path)
    assert all(key in files for key in keys) and kept_key in files

    result = store.purge_payloads(cutoff)
    assert (result.shredded, result.wal_truncated) == (2, True)
    files = on_disk(tmp_path)
    assert not any(key in files for key in keys), "a shredded key is still on disk"
    assert kept_key in files and CANARY not in files
    assert (tmp_path / "audit.sqlite3-wal").stat().st_size == 0
    # The writer goes on writing after the purge.
    later = record(store, b"after the purge")
    assert store.payload("request", later) == b"after the purge"
    store.close()


def test_payloads_stored_before_sealing_read_in_clear_and_purge(tmp_path: Path) -> None:
    store = AuditStore(tmp_path / "audit.sqlite3")
    legacy = record(store, b"legacy " + CANARY, b"legacy answer " + CANARY)
    cutoff = a_moment_after_now()
    sealed = record(store, b"sealed")
    store.close()
    # A store written before payloads were sealed: payloads in clear, no key rows.
    raw = sqlite3.connect(tmp_path / "audit.sqlite3")
    raw.execute("UPDATE requests SET body = ? WHERE id = ?", (b"legacy " + CANARY, legacy))
    raw.execute(
        "UPDATE outcomes SET response_body = ? WHERE request_id = ?",
        (b"legacy answer " + CANARY, legacy),
    )
    raw.execute("DELETE FROM payload_keys WHERE record_id = ?", (legacy,))
    raw.commit()
    raw.close()

    store = AuditStore(tmp_path / "audit.sqlite3")
    assert store.payload("request", legacy) == b"legacy " + CANARY
    assert store.outcomes()[0].response_body == b"legacy answer " + CANARY
    assert store.count_unshredded(cutoff) == 2
    assert store.purge_payloads(cutoff).shredded == 2
    assert store.stored_payload("request", legacy).shredded
    assert store.payload("outcome", legacy) is None
    assert store.payload("request", sealed) == b"sealed"
    assert CANARY not in on_disk(tmp_path), "a plaintext payload survived its purge"
    store.close()


@pytest.mark.parametrize(
    ("date", "problem"),
    [
        ("last tuesday", "'last tuesday' is not a date: give YYYY-MM-DD"),
        ("2025-13-01", "'2025-13-01' is not a date"),
        ("2999-01-01", "'2999-01-01' is in the future"),
    ],
)
def test_a_bad_date_is_refused_with_exit_2(tmp_path: Path, date: str, problem: str) -> None:
    store = AuditStore(tmp_path / "audit.sqlite3")
    request_id = record(store, b"kept")
    store.close()
    done = bastion("audit", "purge", "--before", date, "--data-dir", str(tmp_path), "--yes")
    assert done.returncode == 2
    assert "argument --before" in done.stderr and problem in done.stderr
    store = AuditStore(tmp_path / "audit.sqlite3")
    assert store.payload("request", request_id) == b"kept"
    store.close()


def test_a_date_is_midnight_utc_and_a_naive_time_is_utc() -> None:
    now = datetime(2026, 3, 1, tzinfo=UTC)
    assert purge_cutoff("2026-02-01", now) == datetime(2026, 2, 1, tzinfo=UTC)
    assert purge_cutoff("2026-02-01T12:30", now) == datetime(2026, 2, 1, 12, 30, tzinfo=UTC)
    plus_two = purge_cutoff("2026-02-01T12:30+02:00", now)
    assert plus_two == datetime(2026, 2, 1, 10, 30, tzinfo=UTC)
    with pytest.raises(argparse.ArgumentTypeError, match="in the future"):
        purge_cutoff((now + timedelta(seconds=1)).isoformat(), now)


def test_purge_beside_a_running_proxy_loses_no_request(tmp_path: Path) -> None:
    """The purge's short write transactions queue behind the proxy's, and the other way round."""
    upstream = FakeUpstream().start()
    data_dir = tmp_path / "bastion"
    proxy = start_proxy(upstream.url, data_dir, tmp_path / "proxy.log")
    statuses: list[int] = []
    try:
        key = proxy.keys().create("alice")
        headers = {"Authorization": f"Bearer {key}", "X-Bastion-Feature": "completion"}
        body = {"model": "tiny", "prompt": "def f():", "max_tokens": 4}
        with httpx.Client(base_url=proxy.url, headers=headers, timeout=10) as client:
            for _ in range(300):
                assert client.post("/v1/completions", json=body).status_code == 200
            cutoff = a_moment_after_now()
            stop = threading.Event()

            def traffic() -> None:
                while not stop.is_set():
                    statuses.append(client.post("/v1/completions", json=body).status_code)

            sender = threading.Thread(target=traffic)
            sender.start()
            try:
                time.sleep(0.2)
                done = bastion(
                    "audit",
                    "purge",
                    "--before",
                    cutoff.isoformat(),
                    "--data-dir",
                    str(data_dir),
                    "--yes",
                )
                time.sleep(0.2)
            finally:
                stop.set()
                sender.join(20)
    finally:
        stop_proxy(proxy)
        upstream.stop()
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("shredded 600 payloads")
    assert statuses and set(statuses) == {200}, "a request failed while the purge ran"
    store = AuditStore(data_dir / "audit.sqlite3")
    requests = store.requests()
    assert [r.body is None for r in requests] == [True] * 300 + [False] * len(statuses)
    store.close()
    out = tmp_path / "export.jsonl"
    assert bastion("audit", "export", str(out), "--data-dir", str(data_dir)).returncode == 0
    assert bastion("audit", "verify", str(out)).returncode == 0
