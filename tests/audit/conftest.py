"""Fixtures of the audit tests: a throwaway PostgreSQL cluster per module, a database per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from audit_proxy.checkpoints import Signer
from audit_proxy.config import STORE_PASSWORD_ENV
from audit_proxy.keys import KeyStore

from .pg_fixture import PgCluster, remove_cluster, start_cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    running = start_cluster()
    yield running
    remove_cluster(running)


@pytest.fixture
def db_url(cluster: PgCluster) -> str:
    return cluster.new_database()


@pytest.fixture
def replica_home(
    cluster: PgCluster, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, Path, str]:
    """What proxy replicas on one database share: a data dir (keys, and one signing key made
    before they start), a config naming the database, and a user key ("alice")."""
    data_dir = tmp_path / "bastion"
    config = tmp_path / "proxy.toml"
    config.write_text(f'store_url = "{db_url}"\n')
    monkeypatch.setenv(STORE_PASSWORD_ENV, cluster.password)
    key = KeyStore(data_dir / "keys.sqlite3").create("alice")
    Signer.load_or_create(data_dir)
    return data_dir, config, key
