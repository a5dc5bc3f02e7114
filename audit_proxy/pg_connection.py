"""One PostgreSQL connection kept alive: opened on first use, and again after it broke."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import psycopg
from psycopg.rows import TupleRow

Conn = psycopg.Connection[TupleRow]


class LiveConnection:
    """A connection that a failed statement drops and the next use opens again."""

    def __init__(self, connect: Callable[[], Conn]) -> None:
        self._connect = connect
        self._conn: Conn | None = None

    @property
    def current(self) -> Conn | None:
        """The connection if it is open and sound; None means the next `get` connects anew
        (and whatever the session held, an advisory lock say, is gone)."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            return None
        return self._conn

    def get(self) -> Conn:
        """The open connection; connects first if there is none (raises what `connect` does)."""
        conn = self.current
        if conn is None:
            self.drop()
            conn = self._conn = self._connect()
        return conn

    def drop(self) -> None:
        """Close it, quietly: it is being given up, often because it failed."""
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None
