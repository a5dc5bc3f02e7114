"""Rotating the signing key of a PostgreSQL log while its replicas write (scripts/postgres.sh).

A replica still on the retired key keeps recording but signs nothing more; one given the new
key files in its data dir signs on with them, with no restart; the log verifies against the key
pinned before the rotation, payloads of both keys' time included; a retired key cannot start a
replica again.
"""

from __future__ import annotations

import asyncio
import io
import logging
import shutil
from pathlib import Path

import pytest

from audit_proxy import verify
from audit_proxy.checkpoints import KEY_FILE, LOG_KEY_FILE, RETIRED_KEYS_FILE, Signer
from audit_proxy.export import AuditDatabase, export_log
from audit_proxy.pg_store import PostgresAuditStore
from audit_proxy.store import AuditStoreUnavailable

from .cli import bastion
from .pg_fixture import PgCluster
from .records import record_pair_async


def record_many(store: PostgresAuditStore, count: int, tag: str) -> None:
    async def run() -> None:
        await asyncio.gather(
            *(record_pair_async(store, f"{tag} {i}".encode()) for i in range(count))
        )

    asyncio.run(run())


def replica_dir(source: Path, target: Path, files: tuple[str, ...]) -> Path:
    target.mkdir(mode=0o700, exist_ok=True)
    for name in files:
        shutil.copy2(source / name, target / name)
    return target


def test_rotation_while_replicas_write(
    cluster: PgCluster, db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    admin = tmp_path / "admin"
    first = Signer.load_or_create(admin)
    dirs = [replica_dir(admin, tmp_path / f"r{i}", (KEY_FILE,)) for i in range(2)]
    replicas = [
        PostgresAuditStore(
            db_url, cluster.password, signer=Signer.load(d), checkpoint_every=50, key_dir=d
        )
        for d in dirs
    ]
    for i, replica in enumerate(replicas):
        record_many(replica, 20, f"before {i}")

    done = bastion(
        "audit", "rotate-key", "--data-dir", str(admin), "--store-url", db_url,
        password=cluster.password,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "retired at size 80" in done.stdout and "with no restart" in done.stdout
    assert done.stdout.count("payload keys wrapped anew") == 1
    current = Signer.load(admin)

    # Replica 0 stays on the retired key: it records on, and refuses to sign, saying what to do.
    record_many(replicas[0], 10, "late old-key")
    with caplog.at_level(logging.CRITICAL, logger="bastion.proxy"):
        assert replicas[0].checkpoint() is None
    assert "rotated out" in caplog.text and f"into {dirs[0]}: it signs on" in caplog.text

    # Replica 1 gets the new key files one by one while it runs. Each file short is named.
    steps = [
        ((KEY_FILE,), "copy audit-log-key.pub beside it"),
        ((LOG_KEY_FILE,), "audit-retired-keys.json beside it does not name the retired key"),
    ]
    for files, refusal in steps:
        replica_dir(admin, dirs[1], files)
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="bastion.proxy"):
            record_many(replicas[1], 5, f"copying {files}")  # may sign: 50 records unsigned
            assert replicas[1].checkpoint() is None
        assert refusal in caplog.text
    # With the last one it signs on with the new key: no restart.
    replica_dir(admin, dirs[1], (RETIRED_KEYS_FILE,))
    with caplog.at_level(logging.WARNING, logger="bastion.proxy"):
        signed = replicas[1].checkpoint()
    assert signed is not None and signed.key_id == current.key_id and signed.size == 120
    assert f"now signs with {current.key_id[:16]}" in caplog.text
    assert replicas[1].signer is not None and replicas[1].signer.key_id == current.key_id
    record_many(replicas[1], 5, "new key")  # payload keys wrapped under the new key
    replicas[0].close()

    # The old key cannot start a replica again.
    with pytest.raises(AuditStoreUnavailable, match=r"rotated out .* at size 80"):
        PostgresAuditStore(db_url, cluster.password, signer=Signer.load(dirs[0]))
    # Nor can the new key without the log's own public key beside it.
    lone = replica_dir(admin, tmp_path / "lone", (KEY_FILE,))
    with pytest.raises(AuditStoreUnavailable, match=r"audit-log-key\.pub"):
        PostgresAuditStore(db_url, cluster.password, signer=Signer.load(lone))
    replicas[1].close()

    out = io.StringIO()
    export_log(admin, out, database=AuditDatabase(db_url, cluster.password))
    report = verify.verify_export(out.getvalue().splitlines(), first.public_key)
    assert report.ok, report.problems
    assert report.key_transitions == 1
    assert (report.records, report.signed_size) == (130, 130)  # replica 1 signed at close
    # Replica 0's late payloads were wrapped under the retired key: they still open.
    assert report.payloads_checked == 130
