"""Rate limits shared by proxy replicas through the audit database (a real PostgreSQL).

The exchange between replicas' limiters on the database, then three real `bastion proxy`
processes holding one user to one limit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg.rows import TupleRow

from audit_proxy.keys import KeyStore
from audit_proxy.pg_limits import PostgresUsageBoard
from audit_proxy.pg_store import PostgresAuditStore
from audit_proxy.ratelimit import RateLimiter
from audit_proxy.shared_limits import SharedLimits
from tests.proxy.fake_upstream import FakeUpstream

from .pg_fixture import PgCluster
from .test_replicas import running_replicas


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


class Replica:
    """One replica's limiter, on a clock that stands still (nothing refills unless moved)."""

    def __init__(self, store: PostgresAuditStore, clock: list[float]) -> None:
        self.limiter = RateLimiter(lambda: clock[0])
        self.shared = SharedLimits(self.limiter, store.usage_board(), every_s=60)

    def requests(self, n: int = 1) -> bool:
        """Whether ann may make `n` requests (5 a minute, a burst of 5)."""
        return all(
            self.limiter.take("ann", "limited", "requests", 5, 5, 1) is None for _ in range(n)
        )

    def tokens(self, n: int) -> bool:
        """Whether ann may take `n` model tokens (600 a minute, a burst of 100)."""
        return self.limiter.take("ann", "limited", "tokens", 600, 100, n) is None


async def _exchange(*replicas: Replica) -> None:
    for replica in replicas:
        await replica.shared.sync()


async def _stop(*replicas: Replica) -> None:
    for replica in replicas:
        await replica.shared.stop()


@pytest.fixture
def store(cluster: PgCluster, db_url: str) -> Iterator[PostgresAuditStore]:
    """The audit database at schema v5, whose board the replicas share."""
    opened = PostgresAuditStore(db_url, cluster.password)
    yield opened
    opened.close()


@pytest.fixture
def pair(store: PostgresAuditStore) -> tuple[Replica, Replica, list[float]]:
    """Two replicas on the board, and the clock they share."""
    clock = [0.0]
    return Replica(store, clock), Replica(store, clock), clock


def test_replicas_charge_each_other_what_their_users_took(
    store: PostgresAuditStore, pair: tuple[Replica, Replica, list[float]]
) -> None:
    a, b, clock = pair

    async def run() -> None:
        await _exchange(a, b)
        assert a.requests(4)
        await _exchange(a, b)
        # B heard that four of ann's five are gone.
        assert b.requests(1)
        assert not b.requests(1)
        await _exchange(b, a)
        assert not a.requests(1)
        # Time refills every replica's bucket alike.
        clock[0] += 12.0  # one request at 5 a minute
        assert a.requests(1)
        await _exchange(a, b)
        assert not b.requests(1)

        # Tokens taken as an estimate and settled lower are given back everywhere.
        assert a.tokens(90)
        await _exchange(a, b)
        assert not b.tokens(20)
        a.limiter.settle("ann", "limited", "tokens", 90, 10)
        await _exchange(a, b)
        assert b.tokens(20)

        # A replica that starts later is not charged for the past, but hears of what follows.
        c = Replica(store, clock)
        await _exchange(c)
        assert c.requests(5)
        await _exchange(c, a, b)
        assert not a.requests(1) and not b.requests(1)
        await _stop(a, b, c)

    asyncio.run(run())


def test_a_replica_the_board_forgot_rejoins_without_charging_twice(
    cluster: PgCluster, db_url: str, pair: tuple[Replica, Replica, list[float]]
) -> None:
    a, b, _ = pair

    async def run() -> None:
        await _exchange(a, b)
        assert a.requests(2)
        await _exchange(a, b)
        forgotten = a.shared.replica
        # What the sweep does to a replica silent for ten minutes.
        with psycopg.connect(db_url, password=cluster.password, autocommit=True) as conn:
            conn.execute("DELETE FROM rate_replicas WHERE replica = %s", (forgotten,))
        await _exchange(a)  # A finds out and rejoins under a new name, its totals from zero
        assert a.shared.replica != forgotten
        await _exchange(a, b)
        assert a.requests(1)
        await _exchange(a, b)
        # B was charged 2 + 1, not 2 + (2 + 1): two of ann's five are left.
        assert b.requests(2)
        assert not b.requests(1)
        await _stop(a, b)

    asyncio.run(run())


def test_without_the_database_limits_stay_local_and_it_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def unreachable() -> psycopg.Connection[TupleRow]:
        return psycopg.connect("postgresql://bastion@127.0.0.1:9/none", connect_timeout=2)

    limiter = RateLimiter()
    shared = SharedLimits(limiter, PostgresUsageBoard(unreachable), every_s=60)

    async def run() -> None:
        for _ in range(3):
            await shared.sync()
        assert limiter.take("ann", "limited", "requests", 5, 5, 1) is None
        await shared.stop()

    with caplog.at_level(logging.WARNING, logger="bastion.proxy"):
        asyncio.run(run())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith("rate limits are per replica until the database is back")
    assert shared.status() == {"shared": False, "exchanges": 0, "seconds_since_exchange": None}


ROLES = """
[roles.user]

[roles.limited]
requests_per_minute = 6     # one more every 10 s: nothing refills during the test
request_burst = 4
"""


def test_three_replicas_hold_a_user_to_one_limit(
    upstream: FakeUpstream, tmp_path: Path, replica_home: tuple[Path, Path, str]
) -> None:
    data_dir, config, _ = replica_home
    key = KeyStore(data_dir / "keys.sqlite3").create("lim", role="limited")
    (tmp_path / "roles.toml").write_text(ROLES)
    config.write_text(
        config.read_text() + f'roles_file = "{tmp_path / "roles.toml"}"\nrate_limit_sync_s = 0.05\n'
    )
    headers = {"Authorization": f"Bearer {key}", "X-Bastion-Feature": "completion"}
    statuses = []
    with running_replicas(upstream, data_dir, config, 3, tmp_path) as replicas:
        with httpx.Client(headers=headers, timeout=10) as client:
            for i in range(12):  # round-robin, a little slower than the exchanges
                url = replicas[i % 3].url + "/v1/completions"
                response = client.post(url, json={"model": "tiny", "prompt": f"p{i}"})
                statuses.append(response.status_code)
                if response.status_code == 429:
                    code = response.json()["error"]["code"]
                    assert code == "requests_per_minute_exceeded"
                time.sleep(0.25)
        health = httpx.get(replicas[1].url + "/healthz").json()["rate_limits"]
        assert health["shared"] is True and health["exchanges"] >= 10
        assert health["seconds_since_exchange"] < 5
    # Each replica alone would have let 4 through (12 in all); together they let the burst.
    assert statuses[:4] == [200] * 4
    assert statuses[4:] == [429] * 8
    assert len(upstream.received) == 4
