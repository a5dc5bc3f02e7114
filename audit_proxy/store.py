"""The audit store: one row per model-bound request, written before it goes upstream, and one
row for its outcome, written when the response to the client has ended (however it ended)."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from audit_proxy.sqlite import open_private_db

AbortedBy = Literal["client", "upstream", "proxy"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    received_at TEXT NOT NULL,
    user TEXT NOT NULL,
    role TEXT NOT NULL,
    client TEXT,
    method TEXT NOT NULL,
    route TEXT NOT NULL,
    feature TEXT NOT NULL,
    model TEXT,
    stream INTEGER NOT NULL,
    body_sha256 TEXT NOT NULL,
    body_size INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS outcomes (
    request_id TEXT PRIMARY KEY REFERENCES requests(id),
    finished_at TEXT NOT NULL,
    status INTEGER,
    bytes_out INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    response_body BLOB NOT NULL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    total_tokens INTEGER,
    finish_reason TEXT,
    latency_ms REAL NOT NULL,
    ttfb_ms REAL,
    aborted_by TEXT,
    completed INTEGER NOT NULL,
    error TEXT
);
"""


class AuditStoreUnavailable(Exception):
    """The audit store cannot record; nothing may go upstream."""


class TokenUsage(BaseModel):
    """Token counts as the model server reported them."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None


class RequestRecord(BaseModel):
    """A model-bound request as it arrived, recorded before it was forwarded."""

    seq: int
    id: str
    received_at: datetime
    user: str
    role: str
    client: str | None
    method: str
    route: str
    feature: str
    model: str | None
    stream: bool
    body_sha256: str
    body_size: int
    body: bytes


class OutcomeRecord(BaseModel):
    """How a request ended: what the client got, byte for byte, and who ended it."""

    request_id: str
    finished_at: datetime
    status: int | None
    bytes_out: int
    sha256: str
    response_body: bytes
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    finish_reason: str | None
    latency_ms: float
    ttfb_ms: float | None
    aborted_by: AbortedBy | None
    completed: bool
    error: str | None


_REQUEST_FIELDS = tuple(RequestRecord.model_fields)
_OUTCOME_FIELDS = tuple(OutcomeRecord.model_fields)
_SELECT_OUTCOMES = (
    "SELECT o.request_id, o.finished_at, o.status, o.bytes_out, o.sha256, o.response_body,"
    " o.prompt_tokens, o.completion_tokens, o.total_tokens, o.finish_reason, o.latency_ms,"
    " o.ttfb_ms, o.aborted_by, o.completed, o.error FROM outcomes o"
)


def _outcome(row: tuple[object, ...]) -> OutcomeRecord:
    return OutcomeRecord.model_validate(dict(zip(_OUTCOME_FIELDS, row, strict=True)))


class AuditStore:
    """The audit log in `audit.sqlite3` (WAL); safe to share between threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._conn = open_private_db(path)
            self._conn.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise AuditStoreUnavailable(f"cannot open the audit store {path}: {exc}") from exc
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def record_request(
        self,
        *,
        user: str,
        role: str,
        method: str,
        route: str,
        feature: str,
        model: str | None,
        stream: bool,
        body: bytes,
        client: str | None = None,
    ) -> str:
        """Durably record a request before it is forwarded; returns its id."""
        request_id = uuid.uuid4().hex
        row = (
            request_id,
            datetime.now(UTC).isoformat(),
            user,
            role,
            client,
            method,
            route,
            feature,
            model,
            int(stream),
            hashlib.sha256(body).hexdigest(),
            len(body),
            body,
        )
        self._write(
            "INSERT INTO requests (id, received_at, user, role, client, method, route, feature,"
            " model, stream, body_sha256, body_size, body) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            row,
        )
        return request_id

    def record_outcome(
        self,
        request_id: str,
        *,
        status: int | None,
        response_body: bytes,
        sha256: str,
        usage: TokenUsage | None,
        finish_reason: str | None,
        latency_ms: float,
        ttfb_ms: float | None,
        aborted_by: AbortedBy | None,
        completed: bool,
        error: str | None = None,
    ) -> None:
        """Record how the request ended; `response_body` is every byte the client was sent."""
        usage = usage or TokenUsage()
        self._write(
            "INSERT INTO outcomes (request_id, finished_at, status, bytes_out, sha256,"
            " response_body, prompt_tokens, completion_tokens, total_tokens, finish_reason,"
            " latency_ms, ttfb_ms, aborted_by, completed, error)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                request_id,
                datetime.now(UTC).isoformat(),
                status,
                len(response_body),
                sha256,
                response_body,
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.total_tokens,
                finish_reason,
                latency_ms,
                ttfb_ms,
                aborted_by,
                int(completed),
                error,
            ),
        )

    def requests(self) -> list[RequestRecord]:
        """Every request record, oldest first."""
        rows = self._read(
            "SELECT seq, id, received_at, user, role, client, method, route, feature, model,"
            " stream, body_sha256, body_size, body FROM requests ORDER BY seq"
        )
        return [
            RequestRecord.model_validate(dict(zip(_REQUEST_FIELDS, r, strict=True))) for r in rows
        ]

    def outcomes(self) -> list[OutcomeRecord]:
        """Every outcome record, in the order of their requests."""
        rows = self._read(
            _SELECT_OUTCOMES + " JOIN requests r ON r.id = o.request_id ORDER BY r.seq"
        )
        return [_outcome(row) for row in rows]

    def outcome(self, request_id: str) -> OutcomeRecord | None:
        """The outcome of one request, or None while it is still running (or was lost)."""
        rows = self._read(_SELECT_OUTCOMES + " WHERE o.request_id = ?", (request_id,))
        return _outcome(rows[0]) if rows else None

    def _write(self, sql: str, params: tuple[object, ...]) -> None:
        try:
            with self._lock:
                self._conn.execute(sql, params)
        except sqlite3.Error as exc:
            raise AuditStoreUnavailable(f"the audit store {self.path} cannot write: {exc}") from exc

    def _read(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()
