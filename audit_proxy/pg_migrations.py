"""The PostgreSQL audit store's schema, as ordered migration steps.

`schema_version` holds the version a database is at; `migrate` applies the missing steps in
order, each in its own transaction, under a session advisory lock, so replicas starting at once
take turns and each step runs exactly once. Steps are append-only: never edit a released one.
"""

from __future__ import annotations

from typing import Final

import psycopg
from psycopg.rows import TupleRow

# Advisory lock keys (any 64-bit ints, fixed for all time): one for migrations, one that
# serializes every append to the Merkle log and every checkpoint across replicas.
MIGRATION_LOCK: Final = 0x62617374_696F6E01  # "bastion" + 1
APPEND_LOCK: Final = 0x62617374_696F6E02
# Held for as long as it ships by the one replica that ships the log to the SIEM.
SIEM_LOCK: Final = 0x62617374_696F6E03

# The columns and their types mirror the SQLite store: a leaf is the canonical JSON of the row
# as stored, so `stream` and `completed` are integers, timestamps are the stored ISO strings,
# and `latency_ms`/`ttfb_ms` are doubles.
_V1 = """
CREATE TABLE requests (
    seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    id TEXT PRIMARY KEY,
    received_at TEXT NOT NULL,
    "user" TEXT NOT NULL,
    role TEXT NOT NULL,
    client TEXT,
    method TEXT NOT NULL,
    route TEXT NOT NULL,
    feature TEXT NOT NULL,
    model TEXT,
    stream INTEGER NOT NULL,
    body_sha256 TEXT NOT NULL,
    body_size BIGINT NOT NULL,
    body BYTEA NOT NULL,
    policy TEXT
);
CREATE TABLE outcomes (
    request_id TEXT PRIMARY KEY REFERENCES requests(id),
    finished_at TEXT NOT NULL,
    status INTEGER,
    bytes_out BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    response_body BYTEA NOT NULL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    total_tokens INTEGER,
    finish_reason TEXT,
    latency_ms DOUBLE PRECISION NOT NULL,
    ttfb_ms DOUBLE PRECISION,
    aborted_by TEXT,
    completed INTEGER NOT NULL,
    error TEXT
);
CREATE TABLE leaves (
    seq BIGINT PRIMARY KEY,
    kind TEXT NOT NULL,
    record_id TEXT NOT NULL,
    leaf_hash BYTEA NOT NULL,
    canonical BYTEA NOT NULL,
    UNIQUE (kind, record_id)
);
CREATE TABLE checkpoints (
    size BIGINT PRIMARY KEY,
    log_id TEXT NOT NULL,
    root TEXT NOT NULL,
    time TEXT NOT NULL,
    signature TEXT NOT NULL
);
"""

# Which signing key the log belongs to: a replica with another key must not sign checkpoints
# that an auditor pinning the first key would reject.
_V2 = """
CREATE TABLE log_identity (
    only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    log_id TEXT NOT NULL,
    public_key TEXT NOT NULL
);
"""

# One row per sealed payload (`audit_proxy.payload_crypto`), written in its record's transaction;
# the same meaning as the SQLite store's table. A purge sets `key` to NULL and stamps
# `shredded_at`. A record with no row here was written before v3: its payload column holds the
# plaintext, until a purge overwrites it and adds a shredded row.
_V3 = """
CREATE TABLE payload_keys (
    kind TEXT NOT NULL CHECK (kind IN ('request', 'outcome')),
    record_id TEXT NOT NULL,
    key BYTEA,
    shredded_at TEXT,
    PRIMARY KEY (kind, record_id),
    CHECK ((key IS NULL) = (shredded_at IS NOT NULL))
);
"""

# The SIEM cursors the replicas share: the next seq each sink has to ship, per log.
_V4 = """
CREATE TABLE siem_cursors (
    log_id TEXT NOT NULL,
    sink TEXT NOT NULL,
    next_seq BIGINT NOT NULL CHECK (next_seq >= 0),
    PRIMARY KEY (log_id, sink)
);
"""

# Rate limits shared by the replicas: who is alive, and each one's running totals per bucket.
_V5 = """
CREATE TABLE rate_replicas (
    replica TEXT PRIMARY KEY,
    seen_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE rate_usage (
    replica TEXT NOT NULL REFERENCES rate_replicas(replica) ON DELETE CASCADE,
    "user" TEXT NOT NULL,
    role TEXT NOT NULL,
    lim TEXT NOT NULL CHECK (lim IN ('requests', 'tokens')),
    taken DOUBLE PRECISION NOT NULL,
    per_minute DOUBLE PRECISION NOT NULL,
    capacity DOUBLE PRECISION NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (replica, "user", role, lim)
);
CREATE INDEX rate_usage_updated_at ON rate_usage (updated_at);
"""

# Key rotation (`bastion audit rotate-key`): the hand-overs of the log's signing key, and which
# key signed a checkpoint when it is not the log's own (NULL: the log's own key). And the
# frontier of the Merkle tree at the last checkpoint: a replica starts from it, not from leaf 0.
# And the hashes of whole tiles of 256 leaves, kept as proofs need them (`merkle.TiledTree`).
_V6 = """
CREATE TABLE tiles (
    idx BIGINT PRIMARY KEY,
    hash BYTEA NOT NULL
);
CREATE TABLE frontier (
    only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    size BIGINT NOT NULL,
    packed BYTEA NOT NULL
);
ALTER TABLE checkpoints ADD COLUMN key_id TEXT;
CREATE TABLE key_transitions (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    log_id TEXT NOT NULL,
    from_key_id TEXT NOT NULL UNIQUE,
    to_public_key TEXT NOT NULL UNIQUE,
    size BIGINT NOT NULL,
    root TEXT NOT NULL,
    time TEXT NOT NULL,
    from_signature TEXT NOT NULL,
    to_signature TEXT NOT NULL
);
"""

# Requests to ship the log to a SIEM sink again from an earlier seq (`bastion audit
# siem-resend`), until the replica that ships takes them.
_V7 = """
CREATE TABLE siem_resend (
    log_id TEXT NOT NULL,
    sink TEXT NOT NULL,
    from_seq BIGINT NOT NULL CHECK (from_seq >= 0),
    asked_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX siem_resend_sink ON siem_resend (log_id, sink);
"""
MIGRATIONS: Final[tuple[str, ...]] = (_V1, _V2, _V3, _V4, _V5, _V6, _V7)
LATEST: Final = len(MIGRATIONS)


class SchemaError(Exception):
    """The database's schema cannot be used by this version of Bastion."""


def schema_version(conn: psycopg.Connection[TupleRow]) -> int:
    """The version the database is at (0: no audit schema yet)."""
    row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return 0
    version = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
    return int(version[0]) if version is not None else 0


def migrate(conn: psycopg.Connection[TupleRow], target: int = LATEST) -> int:
    """Bring the database (autocommit `conn`) to `target`; returns the version it was at."""
    if not 0 <= target <= LATEST:
        raise ValueError(f"no schema version {target}; this Bastion knows 0..{LATEST}")
    conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        found = schema_version(conn)
        if found > LATEST:
            raise SchemaError(
                f"the audit database is at schema version {found}, newer than this Bastion "
                f"knows ({LATEST}); upgrade every proxy replica to the same release"
            )
        for version in range(found + 1, target + 1):
            with conn.transaction():
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version ("
                    " version INTEGER PRIMARY KEY,"
                    " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
                )
                conn.execute(MIGRATIONS[version - 1].encode())
                conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
        return found
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
