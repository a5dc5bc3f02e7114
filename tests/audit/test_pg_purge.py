"""Sealed payloads and `bastion audit purge --store-url` on a real PostgreSQL (scripts/postgres.sh).

Payloads are sealed in the tables, a purge shreds exactly the older records while every leaf
stays provable, a v2 database's plaintext rows migrate, read and purge, an old snapshot that
keeps VACUUM from reclaiming keys is reported, and replicas write on while a purge runs.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from audit_proxy import verify
from audit_proxy.checkpoints import Signer
from audit_proxy.export import AuditDatabase, export_log
from audit_proxy.pg_migrations import LATEST, schema_version
from audit_proxy.pg_store import PostgresAuditStore
from audit_proxy.store import AuditStoreUnavailable

from .cli import bastion
from .pg_fixture import PgCluster
from .records import a_moment_after_now, record_pair_async
from .test_purge import check_batched_payload_reads

CANARY = b"canary-5c2e77-do-not-keep"
ANSWER = b'{"text":"ok"}'


async def record_async(store: PostgresAuditStore, prompt: bytes, answer: bytes = ANSWER) -> str:
    """One request and its outcome, as the audit layer writes them."""
    return await record_pair_async(store, prompt, answer)


def record(store: PostgresAuditStore, prompt: bytes, answer: bytes = ANSWER) -> str:
    return asyncio.run(record_async(store, prompt, answer))


def record_many(store: PostgresAuditStore, prompts: list[bytes]) -> list[str]:
    """Concurrent pairs (they share group commits); ids in the order of `prompts`."""

    async def run() -> list[str]:
        return list(await asyncio.gather(*(record_async(store, p) for p in prompts)))

    return asyncio.run(run())


def stored_columns(db_url: str, password: str) -> bytes:
    """Every payload column as the tables hold it, and every whole row as text."""
    with psycopg.connect(db_url, password=password) as conn:
        found = [bytes(v) for (v,) in conn.execute("SELECT body FROM requests")]
        found += [bytes(v) for (v,) in conn.execute("SELECT response_body FROM outcomes")]
        for table in ("requests", "outcomes", "payload_keys"):
            rows = conn.execute(f"SELECT t::text FROM {table} t".encode())  # noqa: S608
            found += [str(text).encode() for (text,) in rows]
    return b"\n".join(found)


def key_rows(db_url: str, password: str, record_id: str) -> dict[str, bytes | None]:
    with psycopg.connect(db_url, password=password) as conn:
        rows = conn.execute(
            "SELECT kind, key FROM payload_keys WHERE record_id = %s", (record_id,)
        ).fetchall()
    return {str(kind): None if key is None else bytes(key) for kind, key in rows}


def verified(data_dir: Path, url: str, password: str) -> verify.Report:
    out = io.StringIO()
    export_log(data_dir, out, database=AuditDatabase(url, password))
    key = Signer.load_or_create(data_dir).public_key
    return verify.verify_export(out.getvalue().splitlines(), key)


def test_payload_keys_are_wrapped_under_the_replicas_signing_key(
    cluster: PgCluster, db_url: str, tmp_path: Path
) -> None:
    signer = Signer.load_or_create(tmp_path / "data")
    store = PostgresAuditStore(db_url, cluster.password, signer=signer)
    request_id = record(store, b"wrapped " + CANARY)
    store.close()
    assert {len(key or b"") for key in key_rows(db_url, cluster.password, request_id).values()} == {
        41
    }
    # The database alone (a DBA, a backup) opens no payload; the data dir's key does.
    alone = PostgresAuditStore(db_url, cluster.password, migrate_schema=False)
    with pytest.raises(AuditStoreUnavailable, match="wrapped under the proxy's signing key"):
        alone.payload("request", request_id)
    alone.close()
    keyed = PostgresAuditStore(
        db_url, cluster.password, migrate_schema=False, key_wrap=signer.key_wrap()
    )
    assert keyed.payload("request", request_id) == b"wrapped " + CANARY
    keyed.close()


def test_payloads_are_sealed_in_the_tables_and_read_back_in_clear(
    cluster: PgCluster, db_url: str
) -> None:
    store = PostgresAuditStore(db_url, cluster.password)
    prompt, answer = b'{"prompt":"' + CANARY + b'"}', b'{"text":"' + CANARY + b'"}'
    first = record(store, prompt, answer)
    second = record(store, b"second prompt")
    assert CANARY not in stored_columns(db_url, cluster.password), "a payload is stored in clear"
    keys = key_rows(db_url, cluster.password, first)
    assert sorted(keys) == ["outcome", "request"]
    assert all(isinstance(k, bytes) and len(k) == 32 for k in keys.values())
    assert keys["request"] != keys["outcome"]

    assert store.requests()[0].body == prompt
    assert store.outcomes()[0].response_body == answer
    outcome = store.outcome(first)
    assert outcome is not None and outcome.response_body == answer
    assert store.payload("request", first) == prompt
    assert not store.stored_payload("outcome", first).shredded

    # The ciphertext and its key moved to another record: the associated data refuses them.
    with psycopg.connect(db_url, password=cluster.password) as conn:
        conn.execute(
            "UPDATE requests SET body = (SELECT body FROM requests WHERE id = %s) WHERE id = %s",
            (first, second),
        )
        conn.execute(
            "UPDATE payload_keys SET key = %s WHERE kind = 'request' AND record_id = %s",
            (keys["request"], second),
        )
    with pytest.raises(AuditStoreUnavailable, match=f"payload of request {second} does not open"):
        store.payload("request", second)
    store.close()


def test_purge_shreds_exactly_the_older_records(cluster: PgCluster, db_url: str) -> None:
    store = PostgresAuditStore(db_url, cluster.password)
    old = [record(store, f"old prompt {i}".encode()) for i in range(5)]
    cutoff = a_moment_after_now()
    new = [record(store, f"new prompt {i}".encode()) for i in range(3)]
    store.close()
    args = ("audit", "purge", "--before", cutoff.isoformat(), "--store-url", db_url)

    asked = bastion(*args, password=cluster.password)
    assert asked.returncode == 2, "without --yes and without a terminal it must not purge"
    assert "would shred 10 payloads" in asked.stderr and "--yes" in asked.stderr

    done = bastion(*args, "--yes", password=cluster.password)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("shredded 10 payloads of records received before")

    store = PostgresAuditStore(db_url, cluster.password, migrate_schema=False)
    for request_id in old:
        assert store.payload("request", request_id) is None
        assert store.stored_payload("outcome", request_id).shredded
        assert key_rows(db_url, cluster.password, request_id) == {
            "request": None,
            "outcome": None,
        }
    for i, request_id in enumerate(new):
        assert store.payload("request", request_id) == f"new prompt {i}".encode()
        assert store.payload("outcome", request_id) == ANSWER
    bodies = [r.body for r in store.requests()]
    assert bodies == [None] * 5 + [f"new prompt {i}".encode() for i in range(3)]
    assert [o.response_body is None for o in store.outcomes()] == [True] * 5 + [False] * 3
    assert store.count_unshredded(cutoff) == 0
    assert store.count_unshredded(datetime.now(UTC)) == 6
    store.close()

    again = bastion(*args, "--yes", password=cluster.password)
    assert again.returncode == 0 and again.stdout.startswith("shredded 0 payloads"), again.stderr


def test_after_purge_the_export_verifies_and_a_shredded_record_proves(
    cluster: PgCluster, db_url: str, tmp_path: Path
) -> None:
    signer = Signer.load_or_create(tmp_path)
    store = PostgresAuditStore(db_url, cluster.password, signer=signer, checkpoint_every=4)
    for i in range(4):
        record(store, f"old {i}".encode())
    cutoff = a_moment_after_now()
    for i in range(2):
        record(store, f"new {i}".encode())
    store.close()  # signs the last checkpoint (size 12)
    where = ("--store-url", db_url, "--data-dir", str(tmp_path))
    purged = bastion(
        "audit", "purge", "--before", cutoff.isoformat(), *where, "--yes", password=cluster.password
    )
    assert purged.returncode == 0, purged.stderr

    out = tmp_path / "export.jsonl"
    exported = bastion("audit", "export", str(out), *where, password=cluster.password)
    assert exported.returncode == 0, exported.stderr
    leaves = [e for e in map(json.loads, out.read_text().splitlines()) if e["type"] == "leaf"]
    assert [e["payload"] is None for e in leaves] == [True] * 8 + [False] * 4
    assert [bool(e.get("payload_shredded")) for e in leaves] == [True] * 8 + [False] * 4
    checked = bastion("audit", "verify", str(out), password=cluster.password)
    assert checked.returncode == 0, checked.stdout
    assert checked.stdout.startswith("OK: 12 records")
    assert "(signed through size 12), 4 payloads checked, 8 shredded by a purge" in checked.stdout

    proof = bastion("audit", "prove", "1", *where, password=cluster.password)
    assert proof.returncode == 0, proof.stderr
    doc = json.loads(proof.stdout)
    assert (doc["kind"], doc["record_id"]) == ("outcome", leaves[0]["record"]["id"])
    checked_proof = bastion("audit", "verify-proof", "-", stdin=proof.stdout, password="")
    assert checked_proof.returncode == 0, checked_proof.stdout
    assert checked_proof.stdout.startswith("OK: record seq 1 is in")


def test_a_v2_database_with_plaintext_rows_migrates_reads_and_purges(
    cluster: PgCluster, db_url: str, tmp_path: Path
) -> None:
    signer = Signer.load_or_create(tmp_path)
    store = PostgresAuditStore(db_url, cluster.password, signer=signer)
    legacy_prompt, legacy_answer = b"legacy " + CANARY, b"legacy answer " + CANARY
    legacy = record(store, legacy_prompt, legacy_answer)
    store.close()
    # Back to what a v2 writer left: payloads in clear, no payload_keys table. The leaves bind
    # the plaintext's hash, so they stay as they are.
    with psycopg.connect(db_url, password=cluster.password) as conn:
        conn.execute("UPDATE requests SET body = %s WHERE id = %s", (legacy_prompt, legacy))
        conn.execute(
            "UPDATE outcomes SET response_body = %s WHERE request_id = %s", (legacy_answer, legacy)
        )
        conn.execute("DROP TABLE payload_keys")
        conn.execute("DROP TABLE siem_cursors")
        conn.execute("DROP TABLE rate_usage")
        conn.execute("DROP TABLE rate_replicas")
        conn.execute("DROP TABLE key_transitions")
        conn.execute("DROP TABLE frontier")
        conn.execute("DROP TABLE tiles")
        conn.execute("DROP TABLE siem_resend")
        conn.execute("ALTER TABLE checkpoints DROP COLUMN key_id")
        conn.execute("DELETE FROM schema_version WHERE version > 2")

    reader = PostgresAuditStore(db_url, cluster.password, migrate_schema=False)
    assert reader.payload("request", legacy) == legacy_prompt
    assert reader.outcomes()[0].response_body == legacy_answer
    reader.close()

    store = PostgresAuditStore(db_url, cluster.password, signer=signer)
    with psycopg.connect(db_url, password=cluster.password) as conn:
        assert schema_version(conn) == LATEST == 7
    assert store.requests()[0].body == legacy_prompt
    cutoff = a_moment_after_now()
    sealed = record(store, b"sealed " + CANARY)
    assert store.count_unshredded(cutoff) == 2

    result = store.purge_payloads(cutoff)
    assert (result.shredded, result.wal_truncated) == (2, True)
    assert store.stored_payload("request", legacy).shredded
    assert store.payload("outcome", legacy) is None
    assert store.payload("request", sealed) == b"sealed " + CANARY
    assert key_rows(db_url, cluster.password, legacy) == {"request": None, "outcome": None}
    assert CANARY not in stored_columns(db_url, cluster.password)
    store.close()

    report = verified(tmp_path, db_url, cluster.password)
    assert report.first_problem() is None, report.problems
    assert (report.records, report.signed_size, report.payloads_checked) == (4, 4, 2)


def test_an_older_snapshot_keeps_vacuum_from_reclaiming_keys_and_is_reported(
    cluster: PgCluster, db_url: str
) -> None:
    store = PostgresAuditStore(db_url, cluster.password)
    old = record(store, b"old prompt")
    cutoff = a_moment_after_now()
    kept = record(store, b"kept prompt")
    args = ("audit", "purge", "--before", cutoff.isoformat(), "--store-url", db_url, "--yes")
    with psycopg.connect(db_url, password=cluster.password) as watcher:
        watcher.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        before = watcher.execute(
            "SELECT key FROM payload_keys WHERE kind = 'request' AND record_id = %s", (old,)
        ).fetchone()
        assert before is not None and before[0] is not None

        done = bastion(*args, password=cluster.password)
        assert done.returncode == 1, done.stderr
        assert done.stdout.startswith("shredded 2 payloads")
        assert "a transaction older than the purge kept VACUUM from removing" in done.stderr
        assert cluster.password not in done.stderr + done.stdout
        # What the message warns of: the old snapshot still reads the key; nobody else does.
        still = watcher.execute(
            "SELECT key FROM payload_keys WHERE kind = 'request' AND record_id = %s", (old,)
        ).fetchone()
        assert still == before
        assert store.payload("request", old) is None
        watcher.rollback()

    again = bastion(*args, password=cluster.password)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("shredded 0 payloads")
    assert store.payload("request", kept) == b"kept prompt"
    store.close()


def test_purge_while_two_replicas_write_loses_nothing(cluster: PgCluster, db_url: str) -> None:
    replicas = [PostgresAuditStore(db_url, cluster.password) for _ in range(2)]
    old = record_many(replicas[0], [f"old {i}".encode() for i in range(300)])  # two batches
    cutoff = a_moment_after_now()
    purger = PostgresAuditStore(db_url, cluster.password, migrate_schema=False)
    results = []
    purge = threading.Thread(target=lambda: results.append(purger.purge_payloads(cutoff)))
    new: list[str] = []
    purge.start()
    while purge.is_alive() or len(new) < 40:
        for i, replica in enumerate(replicas):
            new += record_many(replica, [f"new {len(new)} {i} {j}".encode() for j in range(5)])
    purge.join()
    purger.close()
    assert results and results[0].shredded == 600

    store = replicas[0]
    leaves = store.leaves()
    assert [leaf[0] for leaf in leaves] == list(range(2 * (len(old) + len(new))))
    bodies = {r.id: r.body for r in store.requests()}
    assert all(bodies[request_id] is None for request_id in old)
    assert all(bodies[request_id] is not None for request_id in new)
    assert store.count_unshredded(cutoff) == 0
    for replica in replicas:
        replica.close()


def test_purge_refuses_a_database_without_an_audit_log(cluster: PgCluster, db_url: str) -> None:
    done = bastion(
        "audit", "purge", "--before", "2020-01-01", "--store-url", db_url, "--yes",
        password=cluster.password,
    )  # fmt: skip
    assert done.returncode == 1
    assert "no audit log in the database" in done.stderr
    with psycopg.connect(db_url, password=cluster.password) as conn:
        assert schema_version(conn) == 0, "a purge must not create an audit schema"


@pytest.mark.parametrize(
    ("date", "problem"),
    [
        ("last tuesday", "'last tuesday' is not a date: give YYYY-MM-DD"),
        ("2999-01-01", "'2999-01-01' is in the future"),
    ],
)
def test_a_bad_date_is_refused_with_exit_2(
    cluster: PgCluster, db_url: str, date: str, problem: str
) -> None:
    store = PostgresAuditStore(db_url, cluster.password)
    request_id = record(store, b"kept")
    done = bastion(
        "audit", "purge", "--before", date, "--store-url", db_url, "--yes",
        password=cluster.password,
    )  # fmt: skip
    assert done.returncode == 2
    assert "argument --before" in done.stderr and problem in done.stderr
    assert store.payload("request", request_id) == b"kept"
    store.close()


def test_many_payloads_are_read_in_chunks_as_one_is_read(
    cluster: PgCluster, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = PostgresAuditStore(db_url, cluster.password, signer=Signer.load_or_create(tmp_path))
    check_batched_payload_reads(store, monkeypatch)
    store.close()
