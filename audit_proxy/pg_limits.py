"""The shared rate-limit board in the audit database (tables `rate_replicas`, `rate_usage`).

One row per replica says when it last exchanged; one row per (replica, bucket) holds that
replica's running total. A replica silent for `FORGET_AFTER` (it died, or lost the database
that long) is deleted with its rows by whichever replica exchanges next.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

import psycopg

from audit_proxy.pg_connection import Conn, LiveConnection
from audit_proxy.ratelimit import BucketUsage, Limit
from audit_proxy.shared_limits import BoardUnavailable, Exchange
from audit_proxy.store import AuditStoreUnavailable

FORGET_AFTER: Final = timedelta(minutes=10)
FORGET_EVERY_S: Final = 60.0
# Rows are read again this long after their change: a writer's transaction stamps its rows
# when it starts and commits a little later (totals make reading a row twice harmless, and a
# change missed by a transaction slower than this is made up by the row's next change).
_READ_SLACK: Final = timedelta(seconds=1)

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

_HEARTBEAT = "UPDATE rate_replicas SET seen_at = now() WHERE replica = %s RETURNING now()"
_JOIN = "INSERT INTO rate_replicas (replica, seen_at) VALUES (%s, now()) RETURNING now()"
# One statement for all of a replica's changed buckets (row by row cost 33 us a bucket).
_PUBLISH = (
    'INSERT INTO rate_usage (replica, "user", role, lim, taken, per_minute, capacity, updated_at)'
    " SELECT %s, u, r, l, t, p, c, now()"
    " FROM unnest(%s::text[], %s::text[], %s::text[], %s::float8[], %s::float8[], %s::float8[])"
    " AS b (u, r, l, t, p, c)"
    ' ON CONFLICT (replica, "user", role, lim) DO UPDATE SET taken = EXCLUDED.taken,'
    " per_minute = EXCLUDED.per_minute, capacity = EXCLUDED.capacity, updated_at = now()"
)
_OTHERS = (
    'SELECT replica, "user", role, lim, taken, per_minute, capacity FROM rate_usage'
    " WHERE replica <> %s AND updated_at >= %s"
)
_FORGET = "DELETE FROM rate_replicas WHERE seen_at < now() - %s"


class PostgresUsageBoard:
    """A `UsageBoard` on its own connection to the audit database; reconnects after errors."""

    def __init__(self, connect: Callable[[], Conn]) -> None:
        self._conn = LiveConnection(connect)
        self._since: datetime | None = None
        self._forgot_at = 0.0

    def exchange(self, replica: str, mine: Sequence[BucketUsage], first: bool) -> Exchange:
        try:
            conn = self._conn.get()
            with conn.transaction():
                row = conn.execute(_HEARTBEAT, (replica,)).fetchone()
                if row is None:
                    if not first:
                        # Swept as silent: its rows are gone, and it must not publish again.
                        return Exchange([], forgotten=True)
                    row = conn.execute(_JOIN, (replica,)).fetchone()
                assert row is not None
                now = row[0]
                assert isinstance(now, datetime)
                if mine:
                    conn.execute(_PUBLISH, _published(replica, mine))
                since = _EPOCH if first or self._since is None else self._since
                rows = conn.execute(_OTHERS, (replica, since)).fetchall()
            self._since = now - _READ_SLACK
            self._forget_the_silent(conn)
        except (psycopg.Error, OSError, AuditStoreUnavailable) as exc:
            self._conn.drop()
            raise BoardUnavailable(str(exc)) from None
        return Exchange([_other(row) for row in rows], forgotten=False)

    def _forget_the_silent(self, conn: Conn) -> None:
        if time.monotonic() - self._forgot_at >= FORGET_EVERY_S:
            conn.execute(_FORGET, (FORGET_AFTER,))
            self._forgot_at = time.monotonic()

    def close(self) -> None:
        self._conn.drop()


def _published(replica: str, mine: Sequence[BucketUsage]) -> tuple[object, ...]:
    """The parameters of `_PUBLISH`: the replica, then one array per column."""
    return (
        replica,
        [u.key[0] for u in mine],
        [u.key[1] for u in mine],
        [u.key[2] for u in mine],
        [u.taken for u in mine],
        [u.per_minute for u in mine],
        [u.capacity for u in mine],
    )


def _other(row: tuple[object, ...]) -> tuple[str, BucketUsage]:
    replica, user, role, limit, taken, per_minute, capacity = row
    lim: Limit = "tokens" if limit == "tokens" else "requests"
    usage = BucketUsage(
        (str(user), str(role), lim), _float(taken), _float(per_minute), _float(capacity)
    )
    return str(replica), usage


def _float(value: object) -> float:
    if not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)
