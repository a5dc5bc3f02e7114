"""The writer: leaves appended with their records, signed checkpoints, the signing key."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
import stat
import time
import uuid
from dataclasses import replace
from pathlib import Path

from audit_proxy import export, merkle, verify
from audit_proxy.checkpoints import KEY_FILE, Signer
from audit_proxy.payload_crypto import seal, unseal
from audit_proxy.staging import PREALLOCATED, read_staged
from audit_proxy.store import AuditStore, leafed, new_record_id

from .records import record_outcome, record_pair, record_request


def test_signing_key_is_made_once_owner_only(tmp_path: Path) -> None:
    first = Signer.load_or_create(tmp_path / "d")
    assert stat.S_IMODE((tmp_path / "d" / KEY_FILE).stat().st_mode) == 0o600
    second = Signer.load_or_create(tmp_path / "d")
    assert first.public_key == second.public_key
    assert first.log_id == verify.log_id_of(first.public_key)
    assert "BEGIN PUBLIC KEY" in first.public_key_pem()


def test_each_record_is_a_leaf_without_its_payload(tmp_path: Path) -> None:
    store = AuditStore(tmp_path / "audit.sqlite3")
    request_id = record_pair(store, b'{"prompt":"secret-ish payload"}')
    leaves = store.leaves()
    assert [(seq, kind, rid) for seq, kind, rid, _, _ in leaves] == [
        (0, "request", request_id),
        (1, "outcome", request_id),
    ]
    for seq, kind, _, digest, canonical in leaves:
        assert digest == merkle.leaf_hash(canonical)
        doc = json.loads(canonical)
        assert doc["seq"] == seq and doc["kind"] == kind
        assert canonical == merkle.canonical_json(doc)
        assert b"secret-ish" not in canonical
    request = json.loads(leaves[0][4])["record"]
    assert request["body_sha256"] == store.requests()[0].body_sha256
    assert "body" not in request and "seq" not in request
    outcome = json.loads(leaves[1][4])["record"]
    assert outcome["total_tokens"] == 3 and "response_body" not in outcome
    store.close()


def test_record_ids_are_uuid7s_in_the_order_they_were_made(tmp_path: Path) -> None:
    before_ms = time.time_ns() // 1_000_000
    first = new_record_id()
    time.sleep(0.002)
    second = new_record_id()
    after_ms = time.time_ns() // 1_000_000
    for record_id in (first, second):
        parsed = uuid.UUID(hex=record_id)
        assert parsed.hex == record_id and len(record_id) == 32
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
        assert before_ms <= int(record_id[:12], 16) <= after_ms
    # Time first, so the indexes on record ids take new ones at their right edge.
    assert first < second
    many = [new_record_id() for _ in range(20_000)]
    assert len(set(many)) == len(many)
    assert len({record_id[12:] for record_id in many}) == len(many)  # the random part varies
    store = AuditStore(tmp_path / "audit.sqlite3")
    ids = []
    for _ in range(3):
        ids.append(record_pair(store))
        time.sleep(0.002)  # (within one millisecond, ids take no order)
    assert [r.id for r in store.requests()] == ids == sorted(ids)
    store.close()


def test_a_record_that_cannot_be_filed_stays_staged_until_it_can(tmp_path: Path) -> None:
    store = AuditStore(tmp_path / "audit.sqlite3")
    first = record_pair(store)
    store.file_staged()
    # Sabotage the leaves table: filing fails as a whole, and the records wait in staging.
    raw = sqlite3.connect(tmp_path / "audit.sqlite3")
    raw.execute("ALTER TABLE leaves RENAME TO leaves_kept")
    raw.execute("CREATE TABLE leaves (seq INTEGER PRIMARY KEY, kind TEXT CHECK (0))")
    raw.commit()
    request_id = record_pair(store)  # committed: its frames are in the staging file
    assert [r.id for r in store.requests()] == [first]  # no row without its leaf
    assert len(store.outcomes()) == 1
    assert [r.record_id for r in read_staged(store.staging_path)] == [request_id] * 2
    raw.execute("DROP TABLE leaves")
    raw.execute("ALTER TABLE leaves_kept RENAME TO leaves")
    raw.commit()
    raw.close()
    assert [r.id for r in store.requests()] == [first, request_id]
    assert [kind for _, kind, *_ in store.leaves()] == ["request", "outcome"] * 2
    assert read_staged(store.staging_path) == []  # filed, so the staging file is emptied
    store.close()


def test_records_a_killed_writer_staged_are_filed_by_the_next_store(tmp_path: Path) -> None:
    writer = AuditStore(tmp_path / "audit.sqlite3")
    request_id = record_pair(writer)
    staged = read_staged(writer.staging_path)
    assert [r.kind for r in staged] == ["request", "outcome"]
    # As after kill -9: the records are only in the staging file (plus a torn last frame).
    with open(writer.staging_path, "ab") as torn:
        torn.write(staged[0].frame()[:20])
    reader = AuditStore(tmp_path / "audit.sqlite3")
    assert [r.id for r in reader.requests()] == [request_id]
    assert len(reader.leaves()) == 2
    reader.close()


def test_payloads_are_sealed_when_filed_and_older_sealed_frames_still_file(
    tmp_path: Path,
) -> None:
    writer = AuditStore(tmp_path / "audit.sqlite3")
    request_id = record_pair(writer, b'{"prompt":"staged in the clear"}')
    staged = read_staged(writer.staging_path)
    assert staged[0].payload == b'{"prompt":"staged in the clear"}'
    assert staged[0].payload_key == b""  # sealing waits for filing
    # Frames as earlier versions wrote them, with their leaves; the request's payload sealed at
    # commit, with its key.
    sealed = seal("request", request_id, staged[0].payload)
    older = replace(leafed(staged[0]), payload=sealed.stored, payload_key=sealed.key)
    assert older.leaf_hash and older.frame()[:2] == b"BS"
    writer.staging_path.write_bytes(older.frame() + leafed(staged[1]).frame())
    reader = AuditStore(tmp_path / "audit.sqlite3")
    assert reader.payload("request", request_id) == b'{"prompt":"staged in the clear"}'
    assert reader.outcome(request_id) is not None
    raw = sqlite3.connect(tmp_path / "audit.sqlite3")
    stored = {
        "request": bytes(raw.execute("SELECT body FROM requests").fetchone()[0]),
        "outcome": bytes(raw.execute("SELECT response_body FROM outcomes").fetchone()[0]),
    }
    keys = dict(raw.execute("SELECT kind, key FROM payload_keys"))
    raw.close()
    assert stored["request"] == sealed.stored  # filed as it was sealed, not sealed twice
    assert unseal("outcome", request_id, keys["outcome"], stored["outcome"]) == staged[1].payload
    assert staged[1].payload not in stored["outcome"]
    reader.close()


def test_frames_carry_rows_and_leaves_follow_from_them_as_the_writer_made_them(
    tmp_path: Path,
) -> None:
    writer = AuditStore(tmp_path / "audit.sqlite3")

    async def pair() -> str:
        request_id = await record_request(writer, b'{"prompt":"def f(): pass"}')
        await record_outcome(writer, request_id, latency_ms=0.1 + 0.2)
        return request_id

    request_id = asyncio.run(pair())
    staged = read_staged(writer.staging_path)
    # The commit wrote the row, not the leaf: canonical JSON and hashes wait for the next turn.
    assert [(r.leaf_hash, r.canonical) for r in staged] == [(b"", b"")] * 2
    request_row = json.loads(staged[0].row_doc)
    assert request_row[0] == request_id and None in request_row  # the payload is held apart
    assert b"def f(): pass" not in staged[0].row_doc
    from_frames = [leafed(r) for r in staged]
    # A reader computes from the frames the very leaves the writer filed (floats included).
    assert [(r.seq, r.kind, r.record_id, r.leaf_hash, r.canonical) for r in from_frames] == [
        tuple(leaf) for leaf in writer.leaves()
    ]
    assert json.loads(from_frames[1].canonical)["record"]["latency_ms"] == 0.1 + 0.2

    async def burst() -> None:
        await asyncio.gather(*(record_request(writer) for _ in range(4)))

    # Records that share a group (other requests open) are staged with their leaves: under load
    # the loop has no idle turn to compute them in.
    asyncio.run(burst())
    staged = read_staged(writer.staging_path)
    assert [bool(r.leaf_hash) for r in staged] == [False] + [True] * 3
    assert [r.seq for r in staged] == [2, 3, 4, 5]
    assert [leaf[3] for leaf in writer.leaves()[2:]] == [leafed(r).leaf_hash for r in staged]
    writer.close()


def test_checkpoints_every_n_records_and_at_close(tmp_path: Path) -> None:
    signer = Signer.load_or_create(tmp_path)
    store = AuditStore(tmp_path / "audit.sqlite3", signer, checkpoint_every=4)
    for _ in range(3):
        record_pair(store)
    assert [c.size for c in store.checkpoints()] == [4]
    store.close()
    reopened = AuditStore(tmp_path / "audit.sqlite3")
    checkpoints = reopened.checkpoints()
    assert [c.size for c in checkpoints] == [4, 6]
    hashes = reopened.leaf_hashes()
    for checkpoint in checkpoints:
        assert checkpoint.root == merkle.tree_hash(hashes[: checkpoint.size]).hex()
        assert verify.checkpoint_signed(checkpoint.as_dict(), signer.public_key)
    reopened.close()


def test_checkpoints_every_t_seconds(tmp_path: Path) -> None:
    import time

    signer = Signer.load_or_create(tmp_path)
    store = AuditStore(tmp_path / "audit.sqlite3", signer, checkpoint_every_s=0.05)
    record_pair(store)
    deadline = time.monotonic() + 5
    while not store.checkpoints() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [c.size for c in store.checkpoints()] == [2]
    store.close()


def test_the_log_continues_after_a_restart(tmp_path: Path) -> None:
    signer = Signer.load_or_create(tmp_path)
    store = AuditStore(tmp_path / "audit.sqlite3", signer)
    record_pair(store)
    store.close()
    store = AuditStore(tmp_path / "audit.sqlite3", signer)
    record_pair(store)
    store.close()
    store = AuditStore(tmp_path / "audit.sqlite3")
    assert [leaf[0] for leaf in store.leaves()] == [0, 1, 2, 3]
    last = store.checkpoints()[-1]
    assert last.size == 4
    assert last.root == merkle.tree_hash(store.leaf_hashes()).hex()
    store.close()


def test_the_staging_file_is_written_in_place_and_zeroed_once_filed(tmp_path: Path) -> None:
    writer = AuditStore(tmp_path / "audit.sqlite3", durability="fsync")
    writer.claim_writer()
    # Its blocks exist from the start: an fsync after a write need not commit a new size.
    assert writer.staging_path.stat().st_size == PREALLOCATED
    record_pair(writer, b'{"prompt":"staged in the clear"}')
    assert b"staged in the clear" in writer.staging_path.read_bytes()
    writer.file_staged()
    # Filed: the frames are zeroed, not cut off, and the file keeps its size.
    assert writer.staging_path.read_bytes() == bytes(PREALLOCATED)
    request_id = record_pair(writer)
    assert [r.seq for r in read_staged(writer.staging_path)] == [2, 3]
    assert [r.id for r in writer.requests()][-1] == request_id
    writer.close()


def test_frames_end_where_the_next_leaf_does_not_follow(tmp_path: Path) -> None:
    """After a power loss the zeroes of an emptying may not have reached the disk: frames of
    the new round are followed by older ones, filed already, which must not count."""
    writer = AuditStore(tmp_path / "audit.sqlite3")
    record_pair(writer)
    old = read_staged(writer.staging_path)
    record_pair(writer)
    new = read_staged(writer.staging_path)[2:]
    assert [r.seq for r in old + new] == [0, 1, 2, 3]
    writer.close()
    path = tmp_path / "left.staged"
    path.write_bytes(b"".join(r.frame() for r in new + old))
    assert [r.seq for r in read_staged(path)] == [2, 3]


def test_a_writer_zeroes_all_a_larger_staging_file_left_to_it(tmp_path: Path) -> None:
    """After a burst the file may be many MiB: a new writer zeroes all of it, a MiB at a time."""
    path = tmp_path / "audit.sqlite3.staged"
    path.write_bytes(b"x" * (3 * PREALLOCATED + 123))
    writer = AuditStore(tmp_path / "audit.sqlite3")
    writer.claim_writer()
    assert path.read_bytes() == bytes(3 * PREALLOCATED + 123)
    writer.close()


def test_a_reopened_store_goes_on_from_the_frontier_its_last_checkpoint_saved(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.sqlite3"
    store = AuditStore(path, Signer.load_or_create(tmp_path), 4)
    for _ in range(5):
        record_pair(store)
    store.close()
    conn = sqlite3.connect(path)
    (saved,) = conn.execute("SELECT size FROM frontier").fetchone()
    # A leaf the saved frontier covers is not read again: its damage goes unseen here (the
    # verifier sees it), while the tree goes on from the signed root.
    conn.execute("UPDATE leaves SET leaf_hash = zeroblob(32) WHERE seq = 0")
    conn.commit()
    store = AuditStore(path, Signer.load_or_create(tmp_path), 4)
    record_pair(store)
    store.close()
    (signed_root,) = conn.execute(
        "SELECT root FROM checkpoints ORDER BY size DESC LIMIT 1"
    ).fetchone()
    conn.close()
    assert saved == 10
    reader = AuditStore(path)
    leaves = reader.leaf_hashes()
    reader.close()
    assert signed_root != merkle.tree_hash(leaves).hex()
    assert signed_root == merkle.tree_hash([merkle.leaf_hash(c) for c in _canonicals(path)]).hex()


def test_a_damaged_saved_frontier_is_rebuilt_from_the_leaves(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    store = AuditStore(path, Signer.load_or_create(tmp_path), 4)
    for _ in range(3):
        record_pair(store)
    store.close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE frontier SET packed = zeroblob(length(packed))")
    conn.commit()
    store = AuditStore(path, Signer.load_or_create(tmp_path), 4)
    record_pair(store)
    store.close()
    out = io.StringIO()
    export.export_log(tmp_path, out)
    report = verify.verify_export(out.getvalue().splitlines())
    assert report.ok, report.problems
    assert report.signed_size == 8
    conn.close()


def _canonicals(path: Path) -> list[bytes]:
    conn = sqlite3.connect(path)
    try:
        return [bytes(c) for (c,) in conn.execute("SELECT canonical FROM leaves ORDER BY seq")]
    finally:
        conn.close()
