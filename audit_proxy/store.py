"""The audit store: one row per model-bound request, written before it goes upstream, and one
row for its outcome, written when the response to the client has ended (however it ended)."""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from audit_proxy.checkpoints import (
    CHECKPOINT_EVERY_RECORDS,
    CHECKPOINT_EVERY_S,
    Checkpoint,
    Signer,
)
from audit_proxy.merkle import Frontier, canonical_json, leaf_hash
from audit_proxy.sqlite import open_private_db

AbortedBy = Literal["client", "upstream", "proxy"]
log = logging.getLogger("bastion.proxy")

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
    body BLOB NOT NULL,
    policy TEXT
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


def _add_policy_column(conn: sqlite3.Connection) -> None:
    """Migrate a store made before the policy layer: add the nullable `policy` column."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(requests)")}
    if "policy" not in columns:
        conn.execute("ALTER TABLE requests ADD COLUMN policy TEXT")


# The Merkle log: every request record and every outcome record is one leaf, appended in the
# same transaction as the record itself. A leaf is the canonical JSON of the stored row without
# its payload (which the row binds by SHA-256), so payloads can go while every leaf stays provable.
_LOG_SCHEMA = """
CREATE TABLE IF NOT EXISTS leaves (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    record_id TEXT NOT NULL,
    leaf_hash BLOB NOT NULL,
    canonical BLOB NOT NULL,
    UNIQUE (kind, record_id)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    size INTEGER PRIMARY KEY,
    log_id TEXT NOT NULL,
    root TEXT NOT NULL,
    time TEXT NOT NULL,
    signature TEXT NOT NULL
);
"""
# kind -> (table, key column, payload column); the payload stays out of the leaf.
LEAF_SOURCES = {
    "request": ("requests", "id", "body"),
    "outcome": ("outcomes", "request_id", "response_body"),
}


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
    policy: str | None = None


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

    def __init__(
        self,
        path: Path,
        signer: Signer | None = None,
        checkpoint_every: int = CHECKPOINT_EVERY_RECORDS,
        checkpoint_every_s: float = CHECKPOINT_EVERY_S,
    ) -> None:
        """Open the store; with a `signer` it also signs checkpoints (the proxy's writer)."""
        self.path = path
        try:
            self._conn = open_private_db(path)
            self._conn.executescript(_SCHEMA)
            _add_policy_column(self._conn)
            self._conn.executescript(_LOG_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise AuditStoreUnavailable(f"cannot open the audit store {path}: {exc}") from exc
        self._lock = threading.Lock()
        self.signer = signer
        self._checkpoint_every = checkpoint_every
        self._frontier = self._load_frontier()
        self._signed_size = self._last_signed_size()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        if signer is not None:
            self._ticker = threading.Thread(
                target=self._tick, args=(checkpoint_every_s,), name="audit-checkpoints", daemon=True
            )
            self._ticker.start()

    def close(self) -> None:
        """Sign a last checkpoint (when signing) and close."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(5)
        if self.signer is not None:
            try:
                self.checkpoint()
            except AuditStoreUnavailable as exc:
                log.error("no checkpoint at shutdown: %s", exc)
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
        policy: str | None = None,
    ) -> str:
        """Durably record a request before it is forwarded; returns its id.

        `body` is what goes upstream (already redacted); `policy` is the policy's evidence JSON.
        """
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
            policy,
        )
        self._write(
            "INSERT INTO requests (id, received_at, user, role, client, method, route, feature,"
            " model, stream, body_sha256, body_size, body, policy)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            row,
            leaf=("request", request_id),
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
            leaf=("outcome", request_id),
        )

    def requests(self) -> list[RequestRecord]:
        """Every request record, oldest first."""
        rows = self._read(
            "SELECT seq, id, received_at, user, role, client, method, route, feature, model,"
            " stream, body_sha256, body_size, body, policy FROM requests ORDER BY seq"
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

    def _write(
        self, sql: str, params: tuple[object, ...], leaf: tuple[str, str] | None = None
    ) -> None:
        """Run one insert; with `leaf` (kind, record id), append its leaf in the same commit."""
        try:
            with self._lock:
                if leaf is None:
                    self._conn.execute(sql, params)
                    return
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    self._conn.execute(sql, params)
                    appended = self._append_leaf(*leaf)
                    self._conn.execute("COMMIT")
                except BaseException:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
                self._frontier.append(appended)
                due = self._frontier.size - self._signed_size >= self._checkpoint_every
            if due and self.signer is not None:
                self.checkpoint()
        except sqlite3.Error as exc:
            raise AuditStoreUnavailable(f"the audit store {self.path} cannot write: {exc}") from exc

    def _append_leaf(self, kind: str, record_id: str) -> bytes:
        """Inside the record's transaction: its leaf, from the row as stored. Returns its hash."""
        table, key, payload = LEAF_SOURCES[kind]
        query = f"SELECT * FROM {table} WHERE {key} = ?"  # noqa: S608 (names from LEAF_SOURCES)
        cursor = self._conn.execute(query, (record_id,))
        names = [d[0] for d in cursor.description]
        row = dict(zip(names, cursor.fetchone(), strict=True))
        # The payload is bound by its hash in the row; `seq` is the table's own counter.
        row.pop(payload)
        if kind == "request":
            row.pop("seq", None)
        record = {k: v.hex() if isinstance(v, bytes) else v for k, v in row.items()}
        (seq,) = self._conn.execute("SELECT COALESCE(MAX(seq), -1) + 1 FROM leaves").fetchone()
        data = canonical_json({"kind": kind, "record": record, "seq": seq})
        digest = leaf_hash(data)
        self._conn.execute(
            "INSERT INTO leaves (seq, kind, record_id, leaf_hash, canonical) VALUES (?,?,?,?,?)",
            (seq, kind, record_id, digest, data),
        )
        return digest

    def _load_frontier(self) -> Frontier:
        frontier = Frontier()
        with self._lock:
            for (digest,) in self._conn.execute("SELECT leaf_hash FROM leaves ORDER BY seq"):
                frontier.append(digest)
        return frontier

    def _last_signed_size(self) -> int:
        with self._lock:
            (size,) = self._conn.execute(
                "SELECT COALESCE(MAX(size), 0) FROM checkpoints"
            ).fetchone()
        return int(size)

    def _tick(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            try:
                self.checkpoint()
            except AuditStoreUnavailable as exc:
                log.error("checkpoint failed: %s", exc)

    def checkpoint(self) -> Checkpoint | None:
        """Sign the current tree head if the log grew since the last checkpoint."""
        if self.signer is None:
            raise AuditStoreUnavailable("this audit store has no signing key")
        try:
            with self._lock:
                (count,) = self._conn.execute("SELECT COUNT(*) FROM leaves").fetchone()
                if count != self._frontier.size:
                    # Another process appended to the same file: rebuild from the table.
                    frontier = Frontier()
                    rows = self._conn.execute("SELECT leaf_hash FROM leaves ORDER BY seq")
                    for (digest,) in rows:
                        frontier.append(digest)
                    self._frontier = frontier
                (signed,) = self._conn.execute(
                    "SELECT COALESCE(MAX(size), 0) FROM checkpoints"
                ).fetchone()
                size = self._frontier.size
                if size == 0 or size <= signed:
                    self._signed_size = max(self._signed_size, int(signed))
                    return None
                checkpoint = self.signer.sign(size, self._frontier.root())
                self._conn.execute(
                    "INSERT INTO checkpoints (size, log_id, root, time, signature)"
                    " VALUES (?,?,?,?,?)",
                    (
                        size,
                        checkpoint.log_id,
                        checkpoint.root,
                        checkpoint.time,
                        checkpoint.signature,
                    ),
                )
                self._signed_size = size
                return checkpoint
        except sqlite3.Error as exc:
            raise AuditStoreUnavailable(f"the audit store {self.path} cannot sign: {exc}") from exc

    def leaves(self, limit: int | None = None) -> list[tuple[int, str, str, bytes, bytes]]:
        """(seq, kind, record id, leaf hash, canonical bytes) of the first `limit` leaves."""
        rows = self._read(
            "SELECT seq, kind, record_id, leaf_hash, canonical FROM leaves ORDER BY seq LIMIT ?",
            (-1 if limit is None else limit,),
        )
        return [(int(s), str(k), str(r), bytes(h), bytes(c)) for s, k, r, h, c in rows]  # type: ignore[call-overload]

    def leaves_from(self, seq: int, limit: int = 1000) -> list[tuple[int, str, str, bytes, bytes]]:
        """Up to `limit` leaves from `seq` on."""
        rows = self._read(
            "SELECT seq, kind, record_id, leaf_hash, canonical FROM leaves WHERE seq >= ?"
            " ORDER BY seq LIMIT ?",
            (seq, limit),
        )
        return [(int(s), str(k), str(r), bytes(h), bytes(c)) for s, k, r, h, c in rows]  # type: ignore[call-overload]

    def leaf_hashes(self, size: int | None = None) -> list[bytes]:
        """The leaf hashes of the first `size` leaves (all by default)."""
        rows = self._read(
            "SELECT leaf_hash FROM leaves ORDER BY seq LIMIT ?", (-1 if size is None else size,)
        )
        return [bytes(h) for (h,) in rows]  # type: ignore[call-overload]

    def payload(self, kind: str, record_id: str) -> bytes | None:
        """The payload a leaf binds by hash, or None where it is gone."""
        table, key, payload = LEAF_SOURCES[kind]
        query = f"SELECT {payload} FROM {table} WHERE {key} = ?"  # noqa: S608 (LEAF_SOURCES)
        rows = self._read(query, (record_id,))
        value = rows[0][0] if rows else None
        return bytes(value) if isinstance(value, bytes | bytearray | memoryview) else None

    def checkpoints(self) -> list[Checkpoint]:
        """Every signed checkpoint, smallest first."""
        rows = self._read(
            "SELECT log_id, size, root, time, signature FROM checkpoints ORDER BY size"
        )
        return [
            Checkpoint(str(a), int(b), str(c), str(d), str(e))  # type: ignore[call-overload]
            for a, b, c, d, e in rows
        ]

    def _read(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()
