"""What keeps a PostgreSQL log workable as it grows (scripts/postgres.sh): a replica joining it
starts from the frontier the last checkpoint saved, not from its first leaf (a damaged one is
rebuilt from the leaves); proofs keep tile hashes and read those, not every leaf hash."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import psycopg

from audit_proxy import export, merkle, verify
from audit_proxy.checkpoints import Signer
from audit_proxy.export import AuditDatabase, export_log
from audit_proxy.pg_store import PostgresAuditStore

from .pg_fixture import PgCluster
from .records import record_pair_async


def record_pairs(store: PostgresAuditStore, count: int) -> None:
    async def run() -> None:
        await asyncio.gather(*(record_pair_async(store) for _ in range(count)))

    asyncio.run(run())


def replica(db_url: str, password: str, data_dir: Path) -> PostgresAuditStore:
    return PostgresAuditStore(db_url, password, signer=Signer.load_or_create(data_dir))


def test_a_joining_replica_goes_on_from_the_saved_frontier(
    cluster: PgCluster, db_url: str, tmp_path: Path
) -> None:
    first = replica(db_url, cluster.password, tmp_path)
    record_pairs(first, 15)
    first.close()  # signs size 30 and saves the frontier there
    with psycopg.connect(db_url, password=cluster.password, autocommit=True) as conn:
        saved = conn.execute("SELECT size FROM frontier").fetchone()
        assert saved == (30,)
        true_leaf0 = conn.execute("SELECT leaf_hash FROM leaves WHERE seq = 0").fetchone()[0]
        # A leaf the saved frontier covers is not read again by a joining replica.
        conn.execute("UPDATE leaves SET leaf_hash = %s WHERE seq = 0", (b"\x00" * 32,))

    joining = replica(db_url, cluster.password, tmp_path)
    record_pairs(joining, 2)
    signed = joining.checkpoint()
    joining.close()
    assert signed is not None and signed.size == 34
    with psycopg.connect(db_url, password=cluster.password, autocommit=True) as conn:
        canonicals = [
            bytes(c) for (c,) in conn.execute("SELECT canonical FROM leaves ORDER BY seq")
        ]
        assert signed.root == merkle.tree_hash([merkle.leaf_hash(c) for c in canonicals]).hex()
        # Put the leaf back, and damage the saved frontier instead: it is rebuilt.
        conn.execute("UPDATE leaves SET leaf_hash = %s WHERE seq = 0", (true_leaf0,))
        conn.execute("UPDATE frontier SET packed = %s", (b"\x00" * 96,))

    rebuilt = replica(db_url, cluster.password, tmp_path)
    record_pairs(rebuilt, 1)
    rebuilt.close()
    out = io.StringIO()
    export_log(tmp_path, out, database=AuditDatabase(db_url, cluster.password))
    report = verify.verify_export(out.getvalue().splitlines())
    assert report.ok, report.problems
    assert report.signed_size == 36


def test_proofs_keep_tile_hashes_and_verify(
    cluster: PgCluster, db_url: str, tmp_path: Path
) -> None:
    store = replica(db_url, cluster.password, tmp_path)
    record_pairs(store, 300)
    store.close()
    database = AuditDatabase(db_url, cluster.password)
    for seq in (0, 256, 599):
        proof = export.inclusion_proof(tmp_path, seq, database=database)
        assert verify.verify_proof(proof) is None
    with psycopg.connect(db_url, password=cluster.password, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM tiles").fetchone() == (2,)
