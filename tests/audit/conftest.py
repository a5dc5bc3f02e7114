"""Fixtures of the audit tests: a throwaway PostgreSQL cluster per module, a database per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .pg_fixture import PgCluster, remove_cluster, start_cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    running = start_cluster()
    yield running
    remove_cluster(running)


@pytest.fixture
def db_url(cluster: PgCluster) -> str:
    return cluster.new_database()
