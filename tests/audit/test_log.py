"""The writer: leaves appended with their records, signed checkpoints, the signing key."""

from __future__ import annotations

import json
import sqlite3
import stat
from pathlib import Path

import pytest

from audit_proxy import merkle, verify
from audit_proxy.checkpoints import KEY_FILE, Signer
from audit_proxy.store import AuditStore, AuditStoreUnavailable

from .records import record_pair


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


def test_a_record_that_cannot_get_its_leaf_is_not_written(tmp_path: Path) -> None:
    store = AuditStore(tmp_path / "audit.sqlite3")
    # Sabotage the leaves table: the record's transaction must roll back as a whole.
    raw = sqlite3.connect(tmp_path / "audit.sqlite3")
    raw.execute("DROP TABLE leaves")
    raw.execute("CREATE TABLE leaves (seq INTEGER PRIMARY KEY, kind TEXT CHECK (0))")
    raw.commit()
    raw.close()
    with pytest.raises(AuditStoreUnavailable):
        record_pair(store)
    assert store.requests() == []
    store.close()


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
