"""A real, throwaway PostgreSQL cluster for tests, started by `scripts/postgres.sh`.

The cluster is private to one test session (its own directory and port), so a test may stop
and restart it without disturbing anyone else; each test gets a fresh database in it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from tests.project_scripts import run_script


@dataclass
class PgCluster:
    """A running cluster: the URL of its `bastion` database and the role's password."""

    directory: Path
    url: str
    password: str = field(repr=False)

    def _script(self, *command: str) -> str:
        env = {**os.environ, "BASTION_PG_DIR": str(self.directory)}
        return run_script("postgres.sh", *command, env=env)

    def new_database(self) -> str:
        """A fresh, empty database owned by the `bastion` role; its URL (no password)."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url, password=self.password, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
        return self.url.rsplit("/", 1)[0] + "/" + name

    def stop(self) -> None:
        """Stop the server at once, as a crash would (no shutdown checkpoint)."""
        self._script("stop", "immediate")

    def start(self) -> None:
        self._script("start")


def start_cluster() -> PgCluster:
    """Install PostgreSQL if needed and start a private cluster (`scripts/postgres.sh`)."""
    # Under /tmp itself: the server runs as the `postgres` user, which must reach the directory.
    directory = Path(tempfile.mkdtemp(prefix="bastion-pg-", dir="/tmp"))
    cluster = PgCluster(directory, "", "")
    cluster.url = cluster._script("start")
    cluster.password = (directory / "password").read_text().strip()
    return cluster


def remove_cluster(cluster: PgCluster) -> None:
    """Stop the cluster and delete its files."""
    try:
        cluster.stop()
    finally:
        shutil.rmtree(cluster.directory, ignore_errors=True)
