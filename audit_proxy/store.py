"""The audit store: one row per model-bound request, written before it goes upstream, and one
row for its outcome, written before the end of the response is handed to the client.

The record API every audit store offers (SQLite here; PostgreSQL alongside), see `AuditRecorder`:

    async def record_request(*, user, role, method, route, feature, model, stream, body,
                             client=None, policy=None) -> str        # the new request's id
    async def record_outcome(request_id, *, status, response_body, sha256, usage, finish_reason,
                             latency_ms, ttfb_ms, aborted_by, completed, error=None) -> None

Both return only once the record and its Merkle leaf are committed, and raise
`AuditStoreUnavailable` when they cannot be (the caller then must not go on: fail closed). How
durable "committed" is is the `durability`:

- "process" (default): survives a crash or kill -9 of the proxy (the record's frame is written
  to the staging file before the call returns);
- "fsync": survives power loss too; the staging file is fsynced before the call returns.

Payloads (request and response bodies) are stored sealed, each under its own key in
`payload_keys` (`audit_proxy.payload_crypto`); `purge_payloads` destroys the keys of old records
(crypto-shredding) while their leaves, which bind the plaintext by SHA-256, stay provable.

Group commit: every record asked for in one event-loop iteration goes into one write, and in
"fsync" mode every commit made while an fsync runs shares the next one. A record that no other
can join (no other request is open) is committed at once, a group of one, without the loop
turns a group waits for. Leaves are numbered in commit order, so the Merkle log's order is the
order in which records were committed.

Staged, then filed: a commit appends each record once, whole, as a frame of the staging file
`audit.sqlite3.staged` (`audit_proxy.staging`: its leaf number, row and payload). The leaf
(canonical JSON, its hash, the tree's right edge) is computed from the row at the loop's next
turn, while the request waits for the model server or after it is answered: the leaf number is
fixed at commit, and a reader computes the same leaf from the frame (-56 us p50 in place, paired
blocks, against leaves at commit). Payloads are sealed when filed, not when committed,
which keeps the cipher off the request's path (in place about 70 us a record, some twenty times
its hot-loop cost): the staging file (0600, emptied once all is filed) held the key beside each
ciphertext before, so it kept nothing more secret than it does with the payload itself.
Filing it into `requests`/`outcomes`, `leaves` and `payload_keys` (three tables and four
indexes, most of them keyed by random ids) happens later, many records per transaction: on a
timer in the writer, and before any read, checkpoint or purge, in whichever process reads. A
crash between the two loses nothing: staged records are filed when the store next opens.
The writer files on its event loop, where a request that comes in waits for the filing that
runs: so it files FILE_SLICE records per loop turn, each slice at a moment when its server has
no exchange in flight (`audit_proxy.activity`), waiting for one at most FILE_WAIT_MAX_S; past
FILE_BATCH staged records (a burst) it files them at once. Measured: the slowest 1 % of
sequential requests took 1.6 ms against 3.3 ms when each filing ran whole (some 180 records,
5 ms), with the p50 unchanged (`benchmarks/proxy_ab.py`, paired blocks). One
process writes a store (it holds the staging file's lock). Measured on the proxy's path: a
request record took 263 us p50 to commit when every commit wrote the tables, 144 us staged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel

from audit_proxy.activity import Activity
from audit_proxy.checkpoints import (
    CHECKPOINT_EVERY_RECORDS,
    CHECKPOINT_EVERY_S,
    Checkpoint,
    KeyTransition,
    Signer,
    SigningKeyError,
    sync_dir,
)
from audit_proxy.file_stamp import FileStamp, file_stamp
from audit_proxy.merkle import Frontier, canonical_json, leaf_hash
from audit_proxy.metrics import METRICS
from audit_proxy.payload_crypto import (
    KeyWrap,
    PayloadSealError,
    payload_key,
    rewrapped_or_kept,
    seal,
    stored_key,
    unseal,
)
from audit_proxy.sqlite import BUSY_TIMEOUT_MS, open_private_db
from audit_proxy.staging import StagedRecord, StagingFile, StagingLocked, read_staged

AbortedBy = Literal["client", "upstream", "proxy"]
Durability = Literal["process", "fsync"]
WAL_CHECKPOINT_EVERY_S = 0.5
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
CREATE TABLE IF NOT EXISTS tiles (
    idx INTEGER PRIMARY KEY,
    hash BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS frontier (
    only_row INTEGER PRIMARY KEY CHECK (only_row = 1),
    size INTEGER NOT NULL,
    packed BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS key_transitions (
    seq INTEGER PRIMARY KEY,
    log_id TEXT NOT NULL,
    from_key_id TEXT NOT NULL UNIQUE,
    to_public_key TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    root TEXT NOT NULL,
    time TEXT NOT NULL,
    from_signature TEXT NOT NULL,
    to_signature TEXT NOT NULL
);
"""
CHECKPOINT_COLUMNS = "log_id, size, root, time, signature, key_id"  # as `checkpoint_of` reads
TRANSITION_COLUMNS = (
    "log_id, from_key_id, to_public_key, size, root, time, from_signature, to_signature"
)


def _add_key_id_column(conn: sqlite3.Connection) -> None:
    """Migrate a store made before key rotation: checkpoints name a signing key other than the
    log's own in the nullable `key_id` column."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(checkpoints)")}
    if "key_id" not in columns:
        conn.execute("ALTER TABLE checkpoints ADD COLUMN key_id TEXT")


# kind -> (table, key column, payload column); the payload stays out of the leaf.
LEAF_SOURCES = {
    "request": ("requests", "id", "body"),
    "outcome": ("outcomes", "request_id", "response_body"),
}

# One row per sealed payload, written in its record's transaction. Purge sets `key` to NULL and
# stamps `shredded_at`. A record with no row here was stored before payloads were sealed: its
# payload column holds the plaintext (until a purge overwrites it and adds a shredded row).
# Rows are appended in rowid order, so SQLite rarely moves a key once written (a moved cell
# could leave a copy of the key behind in a page's free space).
_PAYLOAD_KEYS_SCHEMA = """
CREATE TABLE IF NOT EXISTS payload_keys (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    record_id TEXT NOT NULL,
    key BLOB,
    shredded_at TEXT,
    UNIQUE (kind, record_id),
    CHECK ((key IS NULL) = (shredded_at IS NOT NULL))
);
"""
_INSERT_PAYLOAD_KEY = "INSERT INTO payload_keys (kind, record_id, key) VALUES (?,?,?)"

# Filing starts this long after the first unfiled commit, or at once past FILE_BATCH records.
# One transaction files at most FILE_BATCH; the writer files at most FILE_DRAIN in one go.
FILE_AFTER_S = 0.05
FILE_BATCH = 256
FILE_DRAIN = 4096
# Below FILE_BATCH, the writer files FILE_SLICE records per loop turn (some 0.5 ms), each slice at
# a moment when the server has no exchange in flight; it waits for one at most FILE_WAIT_MAX_S.
FILE_SLICE = 16
FILE_WAIT_MAX_S = 0.25


# Payloads shredded per purge transaction: a running proxy waits for at most one batch.
PURGE_BATCH = 200
PURGE_WAL_TRUNCATE_TRIES = 50


def purge_cutoff_text(before: datetime) -> str:
    """`before` as `received_at` is written (UTC isoformat), so text order is time order."""
    if before.tzinfo is None:
        raise ValueError("the purge cutoff needs a time zone")
    return before.astimezone(UTC).isoformat()


# UUIDv7 (RFC 9562): the version and variant bits, and where the millisecond clock goes.
_UUID7_VERSION_AND_VARIANT = (0x7 << 76) | (0b10 << 62)
_UUID7_RAND_A_SHIFT = 64
_UUID7_RAND_B_BITS = 62


def new_record_id() -> str:
    """A new request's id: a UUIDv7 in 32 hex digits, the millisecond it was made, then 74
    random bits.

    Time first, so that the tables' indexes on record ids (four, in SQLite as in PostgreSQL)
    take new ids at their right edge, as they take sequence numbers, rather than on a page
    anywhere in the tree: filing wrote half the pages and read almost none
    (`benchmarks/audit_filing.py`); PostgreSQL wrote 12 % less WAL at 300,000 records, its
    indexes still in its buffers (`benchmarks/audit_ids_pg.py`). The random part keeps an id
    unguessable; the time it tells is on the record anyway.
    """
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    rand_a = rand >> (80 - 12)
    rand_b = rand & ((1 << _UUID7_RAND_B_BITS) - 1)
    value = (millis << 80) | _UUID7_VERSION_AND_VARIANT | (rand_a << _UUID7_RAND_A_SHIFT) | rand_b
    return f"{value:032x}"


def request_row(
    request_id: str,
    body: bytes,
    stored_body: bytes,
    user: str,
    role: str,
    client: str | None,
    method: str,
    route: str,
    feature: str,
    model: str | None,
    stream: bool,
    policy: str | None,
) -> tuple[object, ...]:
    """A `requests` row in column order; `stored_body` is the payload as the store keeps it."""
    received_at = datetime.now(UTC).isoformat()
    digest = hashlib.sha256(body).hexdigest()
    return (
        request_id, received_at, user, role, client, method, route, feature, model, int(stream),
        digest, len(body), stored_body, policy,
    )  # fmt: skip


def outcome_row(
    request_id: str,
    response_body: bytes,
    stored_body: bytes,
    status: int | None,
    sha256: str,
    usage: TokenUsage | None,
    finish_reason: str | None,
    latency_ms: float,
    ttfb_ms: float | None,
    aborted_by: AbortedBy | None,
    completed: bool,
    error: str | None,
) -> tuple[object, ...]:
    """An `outcomes` row in column order; `stored_body` is the payload as the store keeps it."""
    usage = usage or TokenUsage()
    finished_at = datetime.now(UTC).isoformat()
    ttfb = None if ttfb_ms is None else float(ttfb_ms)
    return (
        request_id, finished_at, status, len(response_body), sha256, stored_body,
        usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, finish_reason,
        float(latency_ms), ttfb, aborted_by, int(completed), error,
    )  # fmt: skip


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
    body: bytes | None  # None: shredded
    policy: str | None = None


class OutcomeRecord(BaseModel):
    """How a request ended: what the client got, byte for byte, and who ended it."""

    request_id: str
    finished_at: datetime
    status: int | None
    bytes_out: int
    sha256: str
    response_body: bytes | None  # None: shredded
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
# Every read of a payload also reads its key row: (has a row, key).
_SELECT_REQUESTS = (
    "SELECT r.seq, r.id, r.received_at, r.user, r.role, r.client, r.method, r.route, r.feature,"
    " r.model, r.stream, r.body_sha256, r.body_size, r.body, r.policy,"
    " k.record_id IS NOT NULL, k.key FROM requests r"
    " LEFT JOIN payload_keys k ON k.kind = 'request' AND k.record_id = r.id"
)
_SELECT_OUTCOMES = (
    "SELECT o.request_id, o.finished_at, o.status, o.bytes_out, o.sha256, o.response_body,"
    " o.prompt_tokens, o.completion_tokens, o.total_tokens, o.finish_reason, o.latency_ms,"
    " o.ttfb_ms, o.aborted_by, o.completed, o.error, k.record_id IS NOT NULL, k.key"
    " FROM outcomes o LEFT JOIN payload_keys k ON k.kind = 'outcome' AND k.record_id = o.request_id"
)


@dataclass(frozen=True, slots=True)
class StoredPayload:
    """A record's payload as the store holds it: `data` is None when gone."""

    data: bytes | None
    shredded: bool


NO_PAYLOAD = StoredPayload(None, False)  # no row holds it
# Record ids per payload query: well under SQLite's limit on bound parameters.
PAYLOAD_READ_BATCH = 500


def open_payload(
    kind: str,
    record_id: str,
    stored: object,
    has_key_row: object,
    key: object,
    key_wrap: KeyWrap | None,
) -> StoredPayload:
    """The plaintext of a stored payload, given its key row (see `_PAYLOAD_KEYS_SCHEMA`)."""
    if not isinstance(stored, bytes | bytearray | memoryview):
        return StoredPayload(None, False)
    if not has_key_row:
        return StoredPayload(bytes(stored), False)  # stored before payloads were sealed
    if not isinstance(key, bytes):
        return StoredPayload(None, True)
    try:
        opened = unseal(kind, record_id, payload_key(key, key_wrap), bytes(stored))
        return StoredPayload(opened, False)
    except PayloadSealError as exc:
        raise AuditStoreUnavailable(f"cannot read the audit store: {exc}") from None


def request_from_row(row: tuple[object, ...], key_wrap: KeyWrap | None) -> RequestRecord:
    *fields, has_key_row, key = row
    record = dict(zip(_REQUEST_FIELDS, fields, strict=True))
    record["body"] = open_payload(
        "request", str(record["id"]), record["body"], has_key_row, key, key_wrap
    ).data
    return RequestRecord.model_validate(record)


def outcome_from_row(row: tuple[object, ...], key_wrap: KeyWrap | None) -> OutcomeRecord:
    *fields, has_key_row, key = row
    record = dict(zip(_OUTCOME_FIELDS, fields, strict=True))
    opened = open_payload(
        "outcome", str(record["request_id"]), record["response_body"], has_key_row, key, key_wrap
    )
    record["response_body"] = opened.data
    return OutcomeRecord.model_validate(record)


class SigningStore(Protocol):
    """A store that may sign checkpoints (SQLite's and PostgreSQL's)."""

    @property
    def signer(self) -> Signer | None: ...

    def checkpoint(self) -> Checkpoint | None: ...


def sign_before_stopping(store: SigningStore) -> None:
    """Sign a checkpoint over what the log holds now, when the store signs: the last one a
    stopping proxy makes. Logged, not raised, where the store cannot."""
    if store.signer is None:
        return
    try:
        store.checkpoint()
    except AuditStoreUnavailable as exc:
        log.error("no checkpoint at shutdown: %s", exc)


class AuditRecorder(Protocol):
    """What the audit layer needs of a store: the two durable record calls (see the top)."""

    async def record_request(
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
    ) -> str: ...

    async def record_outcome(
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
    ) -> None: ...


REQUEST_COLUMNS = (
    "id", "received_at", "user", "role", "client", "method", "route", "feature", "model",
    "stream", "body_sha256", "body_size", "body", "policy",
)  # fmt: skip
OUTCOME_COLUMNS = (
    "request_id", "finished_at", "status", "bytes_out", "sha256", "response_body",
    "prompt_tokens", "completion_tokens", "total_tokens", "finish_reason", "latency_ms",
    "ttfb_ms", "aborted_by", "completed", "error",
)  # fmt: skip
_COLUMNS = {"request": REQUEST_COLUMNS, "outcome": OUTCOME_COLUMNS}
# Where each kind's row holds its stored payload.
_PAYLOAD_AT = {kind: columns.index(LEAF_SOURCES[kind][2]) for kind, columns in _COLUMNS.items()}
_FILE_RECORD = {
    kind: f"INSERT INTO {LEAF_SOURCES[kind][0]} ({', '.join(columns)})"  # noqa: S608
    f" VALUES ({','.join('?' * len(columns))})"
    for kind, columns in _COLUMNS.items()
}


def row_from_leaf(kind: str, canonical: bytes, payload: bytes) -> tuple[object, ...]:
    """A record's row (in `_COLUMNS[kind]` order) from its leaf and its stored payload."""
    record = json.loads(canonical)["record"]
    _, _, payload_column = LEAF_SOURCES[kind]
    record[payload_column] = payload
    return tuple(record.get(name) for name in _COLUMNS[kind])


def filed_row(record: StagedRecord, key_wrap: KeyWrap | None) -> tuple[tuple[object, ...], bytes]:
    """The row to file for a staged record, its payload sealed, and the payload's key as stored.

    Commits stage the payload in the clear (no key) and filing seals it, off the request's
    path; frames written before that came with the payload sealed and its key.
    """
    stored, key = record.payload, record.payload_key
    if not key:
        sealed = seal(record.kind, record.record_id, stored)
        stored, key = sealed.stored, sealed.key
    key = stored_key(key, key_wrap)
    if record.row is None:
        return row_from_leaf(record.kind, record.canonical, stored), key
    at = _PAYLOAD_AT[record.kind]
    return (*record.row[:at], stored, *record.row[at + 1 :]), key


def row_doc(kind: str, params: tuple[object, ...]) -> bytes:
    """A record row as its staging frame keeps it until its leaf is computed: a JSON array in
    column order, the payload (which the frame holds apart) left out as null."""
    at = _PAYLOAD_AT[kind]
    return json.dumps((*params[:at], None, *params[at + 1 :])).encode()


def row_from_doc(kind: str, doc: bytes, payload: bytes) -> tuple[object, ...]:
    """The row `row_doc` wrote, its payload put back (JSON gives floats back exactly)."""
    values = json.loads(doc)
    values[_PAYLOAD_AT[kind]] = payload
    return tuple(values)


def leafed(record: StagedRecord) -> StagedRecord:
    """`record` with its leaf: computed from its row when it was staged without one."""
    if record.leaf_hash:
        return record
    row = record.row
    if row is None:
        row = row_from_doc(record.kind, record.row_doc, record.payload)
    return staged_with_leaf(
        record.seq, record.kind, record.record_id, row, record.payload, record.payload_key
    )


def staged_with_leaf(
    seq: int, kind: str, record_id: str, row: tuple[object, ...], payload: bytes, key: bytes
) -> StagedRecord:
    """Record `seq` as staged with its leaf (`key` empty: the payload is still in the clear)."""
    canonical = leaf_of(kind, row, seq)
    return StagedRecord(seq, kind, record_id, leaf_hash(canonical), canonical, payload, key, row)


def leaf_of(kind: str, params: tuple[object, ...], seq: int) -> bytes:
    """The canonical bytes of leaf `seq` for a record row (`params` in `_COLUMNS[kind]` order).

    The payload is left out (the row binds it by SHA-256), and so is `requests.seq`, the table's
    own counter. REAL columns must be given as float, as they read back.
    """
    _, _, payload = LEAF_SOURCES[kind]
    record = {
        name: value.hex() if isinstance(value, bytes) else value
        for name, value in zip(_COLUMNS[kind], params, strict=True)
        if name != payload
    }
    return canonical_json({"kind": kind, "record": record, "seq": seq})


@dataclass(frozen=True, slots=True)
class _TreeHead:
    """The tree at `size` leaves: its root, and its right edge packed (`Frontier.packed`)."""

    size: int
    root: bytes
    packed: bytes


@dataclass(slots=True)
class _Pending:
    """One record waiting for the next group commit, and its caller's future."""

    kind: str
    record_id: str
    params: tuple[object, ...] = field(repr=False)
    loop: asyncio.AbstractEventLoop = field(repr=False)
    future: asyncio.Future[None] = field(repr=False)


@dataclass(frozen=True, slots=True)
class PurgeResult:
    """What `AuditStore.purge_payloads` did."""

    shredded: int
    # False: a reader kept the -wal file from being truncated; old copies of keys may be there.
    wal_truncated: bool


Settlement = list[tuple[asyncio.Future[None], BaseException | None]]


def _settle(results: Settlement) -> None:
    """On the callers' loop: resolve each future (a caller may have given up waiting)."""
    for future, error in results:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


def _settle_everywhere(items: Sequence[tuple[_Pending, BaseException | None]]) -> None:
    """Resolve futures on whichever loops they belong to, from any thread."""
    try:
        here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        here = None
    by_loop: dict[asyncio.AbstractEventLoop, Settlement] = {}
    for item, error in items:
        by_loop.setdefault(item.loop, []).append((item.future, error))
    for loop, results in by_loop.items():
        if loop is here:
            _settle(results)  # already on that loop: no need to wake it
            continue
        # A closed loop raises RuntimeError: nobody is waiting there any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle, results)


class _GroupSyncer:
    """Group fsync for "fsync" durability: one thread fsyncs the staging file for every commit.

    A commit is its frames appended to the staging file; once that file is fsynced the commit
    survives power loss. Commits made while an fsync runs share the next one. Filing needs no
    help: in "fsync" mode SQLite commits with synchronous=FULL, so a record is on disk in the
    database before the staging file that held it is emptied.
    """

    def __init__(self, staging_path: Path) -> None:
        self._fd = os.open(staging_path, os.O_RDONLY)
        # The staging file's directory entry must be durable too.
        sync_dir(staging_path.parent)
        self.fsyncs = 0
        self._cond = threading.Condition()
        self._waiting: list[_Pending] = []
        self._broken: OSError | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="audit-fsync", daemon=True)
        self._thread.start()

    def after_next_fsync(self, items: Sequence[_Pending]) -> None:
        """Resolve `items` (already committed) once an fsync that began after now has ended."""
        with self._cond:
            if self._broken is not None:
                error = AuditStoreUnavailable(f"the audit log cannot be fsynced: {self._broken}")
                _settle_everywhere([(item, error) for item in items])
                return
            self._waiting.extend(items)
            self._cond.notify()

    def sync_now(self, items: Sequence[_Pending]) -> None:
        """fsync on the caller's thread, then resolve `items`: for a record with no other in
        flight, which no group would join, two thread hand-offs cost more than they save."""
        self._settle_after_fsync(items)

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()
        os.close(self._fd)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._stopping:
                    self._cond.wait()
                if not self._waiting:
                    return
                group, self._waiting = self._waiting, []
            self._settle_after_fsync(group)

    def _settle_after_fsync(self, group: Sequence[_Pending]) -> None:
        try:
            if self._broken is None:
                # The staging file keeps its size and blocks (audit_proxy.staging): data only.
                os.fdatasync(self._fd)
                with self._cond:
                    self.fsyncs += 1
        except OSError as exc:
            # After a failed fsync the kernel may have dropped the dirty pages: a later
            # fsync could "succeed" without them, so the store stays refused until restart.
            self._broken = exc
            log.critical("fsync of the audit log failed; refusing all requests: %s", exc)
        error: AuditStoreUnavailable | None = None
        if self._broken is not None:
            error = AuditStoreUnavailable(f"the audit log cannot be fsynced: {self._broken}")
        _settle_everywhere([(item, error) for item in group])


class AuditStore:
    """The audit log in `audit.sqlite3` (WAL) and its staging file; safe to share between threads.

    Records are committed on the event loop's thread, a group per loop iteration (a leaf and a
    frame write take tens of microseconds; a thread hand-off per record costs more than that
    under load). Filing runs on the loop too, in batches, and never waits for SQLite's lock.
    What can take milliseconds is kept off the loop: WAL checkpoints run on a thread of their
    own, and in "fsync" mode so do the fsyncs.
    """

    def __init__(
        self,
        path: Path,
        signer: Signer | None = None,
        checkpoint_every: int = CHECKPOINT_EVERY_RECORDS,
        checkpoint_every_s: float = CHECKPOINT_EVERY_S,
        durability: Durability = "process",
        key_wrap: KeyWrap | None = None,
    ) -> None:
        """Open the store; with a `signer` it also signs checkpoints (the proxy's writer).

        `key_wrap` wraps the payload keys it files and unwraps those it reads: by default the
        signer's, else that of the signing key beside the store (none there: keys unwrapped).
        A copy of the database without that key opens no payload.
        """
        self.path = path
        self.durability: Durability = durability
        try:
            self._key_wrap = key_wrap or (
                signer.key_wrap() if signer is not None else Signer.key_wrap_in(path.parent)
            )
        except SigningKeyError as exc:
            raise AuditStoreUnavailable(f"cannot open the audit store {path}: {exc}") from exc
        try:
            self._conn = open_private_db(path)
            self._conn.executescript(_SCHEMA)
            _add_policy_column(self._conn)
            self._conn.executescript(_LOG_SCHEMA)
            _add_key_id_column(self._conn)
            self._conn.executescript(_PAYLOAD_KEYS_SCHEMA)
            if durability == "fsync":
                # Filing must be on disk before the staging file that held the records is emptied.
                self._conn.execute("PRAGMA synchronous = FULL")
        except (sqlite3.Error, OSError) as exc:
            raise AuditStoreUnavailable(f"cannot open the audit store {path}: {exc}") from exc
        self._lock = threading.Lock()
        self._filing: asyncio.TimerHandle | asyncio.Handle | None = None
        # The server's exchanges in flight, when it tells (see audit_proxy.activity): filing
        # waits for a moment when there are none.
        self.activity: Activity | None = None
        self._awaiting_idle = False
        self._staged_since = 0.0  # when the oldest record not filed yet was committed
        # Requests this store recorded whose outcome it has not: an outcome must have one.
        self._open_requests: set[str] = set()
        self._filed_stamp: FileStamp | None = None
        self.staging_path = Path(f"{path}.staged")
        self._staging: StagingFile | None = None  # opened (and locked) at the first write
        self._staged: list[StagedRecord] = []  # this writer's records not yet filed
        # The last this many of them wait for their leaves (see `_leaf_staged`).
        self._unleafed = 0
        self._leafing: asyncio.Handle | None = None
        self._leafing_loop: asyncio.AbstractEventLoop | None = None
        # The tree heads checkpoints are due for, kept as the tree reached their sizes, until
        # filing has filed that far and signs them (see `_grow_tree`); smallest first.
        self._due_heads: list[_TreeHead] = []
        self.file_staged()
        self.signer = signer
        self._retired_warned = False
        if signer is not None:
            self._refuse_other_keys(signer)
        self._checkpoint_every = checkpoint_every
        self._frontier = self._load_frontier()
        self._signed_size = self._last_signed_size()
        # Transactions committed by this store (group commit puts several records in one).
        self.commits = 0
        self._pending: list[_Pending] = []
        self._pending_lock = threading.Lock()
        self._closed = False
        self._syncer: _GroupSyncer | None = None
        self._wal_checkpointer: threading.Thread | None = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        if signer is not None:
            if self._frontier.size > self._signed_size:
                # A writer that died (kill -9, power loss) left records no checkpoint covers.
                self.checkpoint()
            self._ticker = threading.Thread(
                target=self._tick, args=(checkpoint_every_s,), name="audit-checkpoints", daemon=True
            )
            self._ticker.start()

    @property
    def where(self) -> str:
        """The store's file, named as the PostgreSQL store names its database, for messages."""
        return str(self.path)

    def _refuse_other_keys(self, signer: Signer) -> None:
        """Only the log's current key signs it: not a key a rotation retired, not another
        log's key, not a rotated-in key without the log's own public key beside it."""
        retired = self._retired_at(signer)
        if retired is not None:
            self._conn.close()
            raise AuditStoreUnavailable(retired_key_message(signer, self.where, retired))
        (log_id,) = self._conn.execute(
            "SELECT log_id FROM checkpoints ORDER BY size DESC LIMIT 1"
        ).fetchone() or (signer.log_id,)
        last = self._last_transition()
        current = last.to_key_id if last is not None else signer.log_id
        if log_id != signer.log_id or current != signer.key_id:
            self._conn.close()
            raise AuditStoreUnavailable(
                f"the audit log {self.path} is signed by another key than the one in its data "
                f"dir (log {str(log_id)[:16]}, current key {current[:16]}; this key "
                f"{signer.key_id[:16]} of log {signer.log_id[:16]}): restore the data dir's "
                "audit-signing-key.pem, audit-log-key.pub and audit-retired-keys.json together"
            )

    def _retired_at(self, signer: Signer) -> int | None:
        """The tree size at which `signer`'s key was rotated out, or None."""
        retired = self._transition_from(signer.key_id)
        return retired.size if retired is not None else None

    def claim_writer(self) -> None:
        """Become the store's one writer now, as the proxy does at start (a store otherwise
        becomes it at its first record). Raises `AuditStoreUnavailable` when another live
        process writes it."""
        with self._lock:
            if self._staging is None:
                try:
                    self._open_staging()
                except sqlite3.Error as exc:
                    raise self._unavailable(exc) from exc

    @property
    def fsyncs(self) -> int:
        """How many fsyncs "fsync" durability has made (0 in "process" mode)."""
        return self._syncer.fsyncs if self._syncer is not None else 0

    def close(self) -> None:
        """Commit what is pending, sign a last checkpoint (when signing) and close."""
        with self._pending_lock:
            self._closed = True
        self._flush()
        for handle in (self._filing, self._leafing):
            if handle is not None:
                handle.cancel()
        self.file_staged()
        if self._staging is not None:
            with self._lock:
                if not self._staged:
                    self._staging.empty()
                self._staging.close()
                self._staging = None
        self._stop.set()
        for thread in (self._ticker, self._wal_checkpointer):
            if thread is not None:
                thread.join(5)
        if self._syncer is not None:
            self._syncer.close()
        sign_before_stopping(self)
        with self._lock:
            self._conn.close()

    async def record_request(
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
        request_id = new_record_id()
        row = request_row(
            request_id, body, body, user, role, client, method, route, feature, model, stream,
            policy,
        )  # fmt: skip
        await self._append("request", request_id, row)
        return request_id

    async def record_outcome(
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
        row = outcome_row(
            request_id, response_body, response_body, status, sha256, usage, finish_reason,
            latency_ms, ttfb_ms, aborted_by, completed, error,
        )  # fmt: skip
        await self._append("outcome", request_id, row)

    def requests(self) -> list[RequestRecord]:
        """Every request record, oldest first."""
        rows = self._read(_SELECT_REQUESTS + " ORDER BY r.seq")
        return [request_from_row(row, self._key_wrap) for row in rows]

    def outcomes(self) -> list[OutcomeRecord]:
        """Every outcome record, in the order of their requests."""
        rows = self._read(
            _SELECT_OUTCOMES + " JOIN requests r ON r.id = o.request_id ORDER BY r.seq"
        )
        return [outcome_from_row(row, self._key_wrap) for row in rows]

    def outcome(self, request_id: str) -> OutcomeRecord | None:
        """The outcome of one request, or None while it is still running (or was lost)."""
        rows = self._read(_SELECT_OUTCOMES + " WHERE o.request_id = ?", (request_id,))
        return outcome_from_row(rows[0], self._key_wrap) if rows else None

    async def _append(self, kind: str, record_id: str, params: tuple[object, ...]) -> None:
        """Add one record to the next group commit; return once it and its leaf are durable.

        `params` holds the payload in the clear: it is sealed when the record is filed.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        item = _Pending(kind, record_id, params, loop, future)
        with self._pending_lock:
            if self._closed:
                raise AuditStoreUnavailable(f"the audit store {self.path} is closed")
            first = not self._pending
            alone = first and self._alone(kind)
            if not alone:
                self._pending.append(item)
        if alone:
            # No other record can join its group: committing it now spares the two loop
            # turns of a group (about 25 us a record, sequentially).
            self._commit_and_settle([item], alone=True)
            future.result()  # raises what the commit raised
            return
        if first:
            # Whatever else this loop iteration records joins the same transaction.
            loop.call_soon(self._flush)
        # A caller cancelled meanwhile cancels only its wait: the record is still committed.
        await future

    def _alone(self, kind: str) -> bool:
        """Whether a record of `kind` is the only one that can be in flight: no other request
        is open, so no other record can join its group."""
        return len(self._open_requests) == (kind == "outcome")

    def _flush(self) -> None:
        """Commit every pending record in one write (one per record where that fails)."""
        with self._pending_lock:
            group, self._pending = self._pending, []
        if group:
            self._commit_and_settle(group, alone=len(group) == 1 and self._alone(group[0].kind))

    def _commit_and_settle(self, group: Sequence[_Pending], alone: bool) -> None:
        """Commit `group`, then resolve each record's future once it is durable: at once in
        "process" mode; in "fsync" mode after an fsync, on this thread when `alone`."""
        errors = self._commit_group(group, alone)
        committed = [item for item, error in zip(group, errors, strict=True) if error is None]
        failed = [(item, e) for item, e in zip(group, errors, strict=True) if e is not None]
        if failed:
            _settle_everywhere(failed)
        if self.durability == "fsync":
            try:
                syncer = self._group_syncer()
                if alone:
                    syncer.sync_now(committed)
                else:
                    syncer.after_next_fsync(committed)
            except OSError as exc:
                error = AuditStoreUnavailable(f"the audit log {self.path} cannot be fsynced: {exc}")
                _settle_everywhere([(item, error) for item in committed])
        else:
            _settle_everywhere([(item, None) for item in committed])
        if committed:
            self._schedule_filing()  # which also signs the checkpoints due (see `_grow_tree`)

    def _commit_group(
        self, group: Sequence[_Pending], alone: bool
    ) -> list[AuditStoreUnavailable | None]:
        """Commit `group` in one write; where that fails, each record alone. The errors."""
        if self._wal_checkpointer is None and not self._closed:
            self._start_background_work()
        try:
            with self._lock:
                try:
                    self._commit(group, defer_leaves=alone)
                    return [None] * len(group)
                except sqlite3.Error:
                    # One bad record (say, a duplicate outcome) must not sink the others.
                    errors: list[AuditStoreUnavailable | None] = []
                    for item in group:
                        try:
                            self._commit([item], defer_leaves=False)
                            errors.append(None)
                        except sqlite3.Error as exc:
                            errors.append(self._unavailable(exc))
                    return errors
        except BaseException as exc:  # a caller must never wait forever
            return [self._unavailable(exc) for _ in group]

    def _schedule_filing(self) -> None:
        """On the writer's loop: file staged records soon (at once when many are waiting)."""
        staged = len(self._staged)
        if self._filing is not None and staged < FILE_BATCH:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (closing): the next read or open files them
        if self._filing is not None:
            self._filing.cancel()
        if staged >= FILE_BATCH:
            self._filing = loop.call_soon(self._file_some)
        else:
            self._filing = loop.call_later(FILE_AFTER_S, self._file_some)

    def _file_some(self) -> None:
        """On the writer's loop: file a slice of what is staged, and the rest at the next turns;
        past FILE_BATCH, up to FILE_DRAIN at once (so that the staging file empties under
        steady load). A busy database is tried again later: the loop never waits for SQLite's
        lock (a purge or a reader's filing may hold it)."""
        self._filing = None
        if self._closed:
            return
        burst = len(self._staged) >= FILE_BATCH
        if not burst and self._wait_for_idle():
            return
        limit = FILE_DRAIN if burst else FILE_SLICE
        started = time.perf_counter()
        filed = 0
        try:
            with self._lock:
                self._conn.execute("PRAGMA busy_timeout = 0")
                try:
                    while self._staged and filed < limit:
                        filed += self._file_own_batch(min(FILE_BATCH, limit - filed))
                finally:
                    self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                    METRICS.audit_filed.inc(amount=filed)
                    METRICS.audit_filing_seconds.observe(time.perf_counter() - started)
        except sqlite3.Error as exc:
            busy = isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)
            if not busy:
                log.error("staged audit records of %s cannot be filed yet: %s", self.path, exc)
            with contextlib.suppress(RuntimeError):
                retry_s = FILE_AFTER_S if busy else 1.0
                self._filing = asyncio.get_running_loop().call_later(retry_s, self._file_some)
            return
        if self._staged:
            # The next slice at the loop's next turn: what came in meanwhile goes first.
            self._filing = asyncio.get_running_loop().call_soon(self._file_some)

    def _wait_for_idle(self) -> bool:
        """Whether filing waits, now, for the server to have no exchange in flight: a request
        that came while a slice ran would wait for it. Never past FILE_WAIT_MAX_S after filing
        was due."""
        activity = self.activity
        if activity is None or not activity.in_flight:
            return False
        now = time.monotonic()
        deadline = self._staged_since + FILE_AFTER_S + FILE_WAIT_MAX_S
        if now >= deadline:
            return False
        if not self._awaiting_idle:
            self._awaiting_idle = True
            activity.when_idle(self._on_idle)
        self._filing = asyncio.get_running_loop().call_later(deadline - now, self._file_some)
        return True

    def _on_idle(self) -> None:
        self._awaiting_idle = False
        if self._filing is not None:
            self._filing.cancel()
        self._file_some()

    def file_staged(self) -> None:
        """File every staged record now (any process may, under SQLite's write lock).

        Every read files first; this is for those who read the tables with their own SQL.

        A store that cannot (a read-only copy, a broken table) logs why and reads what is filed.
        """
        try:
            with self._lock:
                if self._staging is not None:
                    while self._staged:
                        self._file_own_batch()
                else:
                    self._file_from_disk()
        except sqlite3.Error as exc:
            log.warning("staged audit records of %s cannot be filed: %s", self.path, exc)

    def _file_own_batch(self, limit: int = FILE_BATCH) -> int:
        """The writer, under the lock: file up to `limit` of its staged records; empty the
        staging file once all are filed. Returns how many it took off the staged list."""
        self._leaf_staged()
        filed = self._file_batch(self._staged, limit)
        done = sum(1 for record in self._staged if record.seq < filed)
        del self._staged[:done]
        if not self._staged and self._staging is not None:
            self._staging.empty()
        while self._due_heads and self._due_heads[0].size <= filed:
            if not self._sign_due_head(self._due_heads[0]):
                break
            del self._due_heads[0]
        return done

    def _file_from_disk(self) -> None:
        """Not the writer, under the lock: file what the staging file holds that is not filed.

        The file is read again only when it changed since this store last filed all of it.
        """
        stamp = file_stamp(self.staging_path)
        if stamp is None or stamp[1] == 0 or stamp == self._filed_stamp:
            return
        records = [leafed(record) for record in read_staged(self.staging_path)]
        filed = self._next_unfiled_seq()
        while any(record.seq >= filed for record in records):
            filed = self._file_batch(records)
        self._filed_stamp = stamp

    def _next_unfiled_seq(self) -> int:
        """Under the lock: the number of the first leaf not in `leaves` yet."""
        (filed,) = self._conn.execute("SELECT COALESCE(MAX(seq), -1) + 1 FROM leaves").fetchone()
        return int(filed)

    def _staging_file_filed(self) -> bool:
        """Under the lock: whether every record in the staging file is filed."""
        filed = self._next_unfiled_seq()
        return all(record.seq < filed for record in read_staged(self.staging_path))

    @contextlib.contextmanager
    def _immediate(self) -> Iterator[None]:
        """Under the lock: one write transaction, taken at once, rolled back on any error."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise

    def _file_batch(self, staged: Sequence[StagedRecord], limit: int = FILE_BATCH) -> int:
        """Under the lock: file up to `limit` of `staged` in one transaction, skipping what
        is filed already (the writer and any reader may both file). Returns the next unfiled
        leaf number."""
        with self._immediate():
            filed = self._next_unfiled_seq()
            batch = [record for record in staged if record.seq >= filed][:limit]
            for offset, record in enumerate(batch):
                if record.seq != filed + offset:
                    raise sqlite3.IntegrityError(
                        f"staged leaf {record.seq} does not follow leaf {filed + offset - 1}"
                    )
            self._file_records(batch)
            filed += len(batch)
        return filed

    def _file_records(self, batch: Sequence[StagedRecord]) -> None:
        """Inside the filing transaction: the records' rows, their leaves and payload keys.

        Requests go in before outcomes (an outcome's request may be in the same batch);
        each table gets its rows in leaf order.
        """
        filed = [(r, *filed_row(r, self._key_wrap)) for r in batch]
        for kind in ("request", "outcome"):
            rows = [row for r, row, _ in filed if r.kind == kind]
            if rows:
                self._conn.executemany(_FILE_RECORD[kind], rows)
        self._conn.executemany(
            "INSERT INTO leaves (seq, kind, record_id, leaf_hash, canonical) VALUES (?,?,?,?,?)",
            [(r.seq, r.kind, r.record_id, r.leaf_hash, r.canonical) for r in batch],
        )
        self._conn.executemany(_INSERT_PAYLOAD_KEY, [(r.kind, r.record_id, k) for r, _, k in filed])

    def _start_background_work(self) -> None:
        """At the first write: WAL checkpoints move to a thread of their own."""
        with self._lock:
            # SQLite's own checkpoints would run inside a commit, on the event loop, and fsync.
            self._conn.execute("PRAGMA wal_autocheckpoint = 0")
        self._wal_checkpointer = threading.Thread(
            target=self._checkpoint_wal, name="audit-wal-checkpoints", daemon=True
        )
        self._wal_checkpointer.start()

    def _group_syncer(self) -> _GroupSyncer:
        """The fsync thread, started after the first commit (which makes the staging file)."""
        if self._syncer is None:
            self._syncer = _GroupSyncer(self.staging_path)
        return self._syncer

    def _checkpoint_wal(self) -> None:
        """Copy the WAL into the database now and then, without blocking the writer."""
        conn = open_private_db(self.path)
        try:
            while not self._stop.wait(WAL_CHECKPOINT_EVERY_S):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:
                    log.warning("WAL checkpoint of the audit store failed: %s", exc)
        finally:
            conn.close()

    def _unavailable(self, exc: BaseException) -> AuditStoreUnavailable:
        return AuditStoreUnavailable(f"the audit store {self.path} cannot write: {exc}")

    def _commit(self, group: Sequence[_Pending], defer_leaves: bool) -> None:
        """Stage the group's records, numbered in order, in one write: with their leaves, or
        with their rows and the leaves computed at the loop's next turn (`defer_leaves`, for a
        record that is alone on the path: under load the loop has no idle turn to give)."""
        if self._staging is None:
            self._open_staging()
        assert self._staging is not None
        if not defer_leaves:
            self._leaf_staged()  # the leaves of earlier records come first
        seq = self._frontier.size + self._unleafed
        records = []
        for item in group:
            if item.kind == "outcome":
                self._check_outcome_allowed(item.record_id)
            payload = item.params[_PAYLOAD_AT[item.kind]]
            assert isinstance(payload, bytes)
            # The payload's key is empty: it is sealed when filed.
            if defer_leaves:
                row = row_doc(item.kind, item.params)
                record = StagedRecord(
                    seq, item.kind, item.record_id, b"", b"", payload, b"", item.params, row
                )
            else:
                record = staged_with_leaf(seq, item.kind, item.record_id, item.params, payload, b"")
            records.append(record)
            seq += 1
        self._staging.append(records)
        self.commits += 1
        if not self._staged:
            self._staged_since = time.monotonic()
        self._staged.extend(records)
        for record in records:
            if record.kind == "request":
                self._open_requests.add(record.record_id)
            else:
                self._open_requests.discard(record.record_id)
        if defer_leaves:
            self._unleafed += len(records)
            self._schedule_leafing()
        else:
            for record in records:
                self._grow_tree(record.leaf_hash)

    def _schedule_leafing(self) -> None:
        """Under the lock: compute the new records' leaves at the loop's next turn, when the
        request that made them waits for the model server or has been answered (the leaf,
        canonical JSON and hashes, is some 30 us a record on the path, where the row in its
        frame is a few). With no loop, at once."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._leaf_staged()
            return
        # (A handle left on a loop that has ended will never run: schedule on this one.)
        if self._leafing is None or self._leafing_loop is not loop:
            self._leafing = loop.call_soon(self._leaf_soon)
            self._leafing_loop = loop

    def _grow_tree(self, leaf_hash: bytes) -> None:
        """Under the lock: one more leaf on the tree's right edge. When the tree reaches the size
        a checkpoint is due at, its head is kept, and signed once filing has filed that far:
        signing there and then would file the whole backlog on the path of the request whose
        record crossed the line (1 to 3 ms, on one request in 500)."""
        frontier = self._frontier
        frontier.append(leaf_hash)
        last = self._due_heads[-1].size if self._due_heads else self._signed_size
        if self.signer is not None and frontier.size - last >= self._checkpoint_every:
            self._due_heads.append(_TreeHead(frontier.size, frontier.root(), frontier.packed()))

    def _sign_due_head(self, head: _TreeHead) -> bool:
        """Under the lock, once its leaves are filed: sign the checkpoint `head` is due for.
        False where the database refuses: the next filing tries again."""
        if head.size <= self._signed_size:
            return True
        try:
            self._sign_head(head)
        except sqlite3.Error as exc:
            if not (isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)):
                log.error("checkpoint at %d records of %s failed: %s", head.size, self.path, exc)
            return False
        return True

    def _leaf_soon(self) -> None:
        self._leafing = None
        with self._lock:
            self._leaf_staged()

    def _leaf_staged(self) -> None:
        """Under the lock: the leaves of the staged records that wait for theirs, in order, and
        the tree's right edge with them."""
        if not self._unleafed:
            return
        for i in range(len(self._staged) - self._unleafed, len(self._staged)):
            record = leafed(self._staged[i])
            self._staged[i] = record
            self._grow_tree(record.leaf_hash)
        self._unleafed = 0

    def _open_staging(self) -> None:
        """At the first write: lock the staging file, file what a dead writer left in it."""
        try:
            staging = StagingFile(self.staging_path)
        except StagingLocked as exc:
            raise AuditStoreUnavailable(str(exc)) from None
        try:
            # (Called under the lock, from a commit.)
            self._filed_stamp = None
            self._file_from_disk()  # what a writer before this one left
            if not self._staging_file_filed():
                raise sqlite3.IntegrityError("records left in the staging file cannot be filed")
            staging.empty()
            staging.preallocate()
            # Other stores may have written before this one took the lock.
            self._frontier = self._read_frontier()
        except BaseException:
            staging.close()
            raise
        self._staging = staging

    def _check_outcome_allowed(self, request_id: str) -> None:
        """The request is on the log and has no outcome yet."""
        if request_id in self._open_requests:
            return
        staged = {(r.kind, r.record_id) for r in self._staged}
        (known, ended) = self._conn.execute(
            "SELECT EXISTS (SELECT 1 FROM requests WHERE id = ?1),"
            " EXISTS (SELECT 1 FROM outcomes WHERE request_id = ?1)",
            (request_id,),
        ).fetchone()
        if not (known or ("request", request_id) in staged):
            raise sqlite3.IntegrityError(f"no request {request_id} to give an outcome")
        if ended or ("outcome", request_id) in staged:
            raise sqlite3.IntegrityError(f"request {request_id} has its outcome already")

    def _read_frontier(self) -> Frontier:
        """The tree of every leaf: filed, then this writer's staged (under the lock)."""
        self._leaf_staged()
        frontier = self._saved_frontier()
        for (digest,) in self._conn.execute(
            "SELECT leaf_hash FROM leaves WHERE seq >= ? ORDER BY seq", (frontier.size,)
        ):
            frontier.append(digest)
        for record in self._staged:
            frontier.append(record.leaf_hash)
        return frontier

    def _saved_frontier(self) -> Frontier:
        """The frontier the last checkpoint saved, when it still holds (else an empty one)."""
        row = self._conn.execute(
            "SELECT f.size, f.packed, c.root FROM frontier f JOIN checkpoints c ON c.size = f.size"
            " WHERE f.size <= (SELECT COALESCE(MAX(seq), -1) + 1 FROM leaves)"
        ).fetchone()
        if row is None:
            return Frontier()
        return Frontier.unpacked(int(row[0]), bytes(row[1]), str(row[2])) or Frontier()

    def _load_frontier(self) -> Frontier:
        with self._lock:
            return self._read_frontier()

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
                # A checkpoint covers filed leaves only, so an export never ends short of one.
                while self._staged:
                    self._file_own_batch()
                # Leaves are numbered without gaps; COUNT(*) would scan them all (about 1 s at
                # ten million, under the lock that filing needs).
                if self._next_unfiled_seq() != self._frontier.size:
                    # Another process appended to the same file: rebuild from the table.
                    self._frontier = self._read_frontier()
                (signed,) = self._conn.execute(
                    "SELECT COALESCE(MAX(size), 0) FROM checkpoints"
                ).fetchone()
                size = self._frontier.size
                if size == 0 or size <= signed:
                    self._signed_size = max(self._signed_size, int(signed))
                    return None
                frontier = self._frontier
                return self._sign_head(_TreeHead(size, frontier.root(), frontier.packed()))
        except sqlite3.Error as exc:
            raise AuditStoreUnavailable(f"the audit store {self.path} cannot sign: {exc}") from exc

    def _sign_head(self, head: _TreeHead) -> Checkpoint | None:
        """Under the lock: sign `head` and store the checkpoint; None (warned once) when this
        store's key was retired. Raises sqlite3.Error."""
        if self.signer is None:
            return None
        retired = self._retired_at(self.signer)
        if retired is not None:
            self._warn_retired(retired)
            return None
        return self._insert_checkpoint(self.signer.sign(head.size, head.root), head.packed)

    def _warn_retired(self, size: int) -> None:
        if not self._retired_warned and self.signer is not None:
            self._retired_warned = True
            log.critical("%s", retired_key_message(self.signer, self.where, size))

    def _insert_checkpoint(self, checkpoint: Checkpoint, packed: bytes) -> Checkpoint:
        """Under the lock: store a signed checkpoint, and the frontier at its size, `packed`
        (so that the next start reads the leaves after it, not the whole log)."""
        self._conn.execute(
            "INSERT INTO checkpoints (size, log_id, root, time, signature, key_id)"
            " VALUES (?,?,?,?,?,?)",
            checkpoint.as_row(),
        )
        self._conn.execute(
            "INSERT OR REPLACE INTO frontier (only_row, size, packed) VALUES (1, ?, ?)",
            (checkpoint.size, packed),
        )
        self._signed_size = checkpoint.size
        return checkpoint

    def rotate_signing_key(self, outgoing: Signer, incoming: Signer) -> KeyTransition:
        """Hand the log's signing from `outgoing` to `incoming` (`bastion audit rotate-key`).

        One transaction: a checkpoint of the current tree by the outgoing key (when it grew),
        and the transition both keys sign; a store signing with the outgoing key signs with the
        incoming one from then on. Run again after the same hand-over it returns the
        transition already made. Then every stored payload key is wrapped anew under the
        incoming key (`rewrap_payload_keys`). Raises `AuditStoreUnavailable`.
        """
        try:
            with self._lock:
                done = self._transition_from(outgoing.key_id)
                if done is not None:
                    return same_hand_over(done, incoming)
                check_current(outgoing, self._last_transition())
                while self._staged:
                    self._file_own_batch()
                self._frontier = self._read_frontier()
                size, root = self._frontier.size, self._frontier.root()
                (signed,) = self._conn.execute(
                    "SELECT COALESCE(MAX(size), 0) FROM checkpoints"
                ).fetchone()
                transition = outgoing.hand_over(incoming, size, root)
                with self._immediate():
                    if size > int(signed):
                        self._insert_checkpoint(outgoing.sign(size, root), self._frontier.packed())
                    self._conn.execute(
                        f"INSERT INTO key_transitions ({TRANSITION_COLUMNS})"  # noqa: S608
                        " VALUES (?,?,?,?,?,?,?,?)",
                        tuple(transition.as_dict().values()),
                    )
                if self.signer is not None and self.signer.key_id == outgoing.key_id:
                    # A running proxy's store: the next checkpoint is the incoming key's.
                    self.signer = incoming
        except sqlite3.Error as exc:
            raise AuditStoreUnavailable(
                f"the audit store {self.path} cannot record the key rotation: {exc}"
            ) from exc
        return transition

    def _transition_from(self, key_id: str) -> KeyTransition | None:
        row = self._conn.execute(
            f"SELECT {TRANSITION_COLUMNS} FROM key_transitions WHERE from_key_id = ?",  # noqa: S608
            (key_id,),
        ).fetchone()
        return transition_of(row) if row is not None else None

    def _last_transition(self) -> KeyTransition | None:
        row = self._conn.execute(
            f"SELECT {TRANSITION_COLUMNS} FROM key_transitions"  # noqa: S608
            " ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        return transition_of(row) if row is not None else None

    def key_transitions(self) -> list[KeyTransition]:
        """Every hand-over of the log's signing key, oldest first."""
        rows = self._read(
            f"SELECT {TRANSITION_COLUMNS} FROM key_transitions ORDER BY seq"  # noqa: S608
        )
        return [transition_of(row) for row in rows]

    def rewrap_payload_keys(self, old: KeyWrap | None, new: KeyWrap) -> int:
        """Wrap every stored payload key under `new`; returns how many changed.

        Batches of short transactions with `secure_delete`, then the WAL is truncated, as a
        purge does, so that no copy under the old key-encryption key is left behind.
        """
        self._key_wrap = new  # first: keys filed meanwhile need no second pass
        self.file_staged()
        try:
            with self._lock:
                self._conn.execute("PRAGMA secure_delete = ON")
            changed = self._rewrap_batches(old, new)
            self._truncate_wal()
        except sqlite3.Error as exc:
            raise AuditStoreUnavailable(
                f"the payload keys in {self.path} cannot be wrapped anew: {exc}"
            ) from exc
        return changed

    def _rewrap_batches(self, old: KeyWrap | None, new: KeyWrap) -> int:
        changed = 0
        after = -1
        while True:
            with self._lock:
                rows = self._conn.execute(
                    "SELECT seq, key FROM payload_keys WHERE seq > ? AND key IS NOT NULL"
                    " ORDER BY seq LIMIT ?",
                    (after, PURGE_BATCH),
                ).fetchall()
                if not rows:
                    return changed
                after = int(rows[-1][0])
                updates = [
                    (stored, seq)
                    for seq, key in rows
                    if (stored := rewrapped_or_kept(bytes(key), old, new, seq)) is not None
                ]
                if updates:
                    with self._immediate():
                        self._conn.executemany(
                            "UPDATE payload_keys SET key = ? WHERE seq = ?", updates
                        )
                    changed += len(updates)

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

    def leaf_hashes_between(self, start: int, end: int) -> list[bytes]:
        """The leaf hashes of seq `start` up to (not including) `end`."""
        rows = self._read(
            "SELECT leaf_hash FROM leaves WHERE seq >= ? AND seq < ? ORDER BY seq", (start, end)
        )
        return [bytes(h) for (h,) in rows]  # type: ignore[call-overload]

    def saved_tiles(self, count: int) -> list[bytes]:
        """The kept hashes of the first `count` tiles, up to the first one missing."""
        rows = self._read("SELECT idx, hash FROM tiles WHERE idx < ? ORDER BY idx", (count,))
        return contiguous_tiles(rows)

    def save_tiles(self, first: int, hashes: Sequence[bytes]) -> None:
        """Keep tile hashes from tile `first` on; a store that cannot write keeps none."""
        try:
            with self._lock, self._immediate():
                self._conn.executemany(
                    "INSERT OR IGNORE INTO tiles (idx, hash) VALUES (?, ?)",
                    [(first + i, digest) for i, digest in enumerate(hashes)],
                )
        except sqlite3.Error as exc:
            log.info("tile hashes of %s not kept (%s): proofs compute them again", self.path, exc)

    def payload(self, kind: str, record_id: str) -> bytes | None:
        """The payload a leaf binds by hash, or None where it is gone (shredded)."""
        return self.stored_payload(kind, record_id).data

    def stored_payload(self, kind: str, record_id: str) -> StoredPayload:
        """The payload a leaf binds by hash, and whether it was shredded."""
        return self.stored_payloads(kind, [record_id]).get(record_id, NO_PAYLOAD)

    def stored_payloads(self, kind: str, record_ids: Sequence[str]) -> dict[str, StoredPayload]:
        """`stored_payload` of many records of one kind, by record id (absent: no row)."""
        table, key, payload = LEAF_SOURCES[kind]
        found: dict[str, StoredPayload] = {}
        for start in range(0, len(record_ids), PAYLOAD_READ_BATCH):
            chunk = record_ids[start : start + PAYLOAD_READ_BATCH]
            # Names from LEAF_SOURCES only; the ids are bound.
            query = (
                f"SELECT t.{key}, t.{payload}, k.record_id IS NOT NULL, k.key"  # noqa: S608
                f" FROM {table} t"
                f" LEFT JOIN payload_keys k ON k.kind = ? AND k.record_id = t.{key}"
                f" WHERE t.{key} IN ({','.join('?' * len(chunk))})"
            )
            for record_id, stored, has_key_row, key_stored in self._read(query, (kind, *chunk)):
                found[str(record_id)] = open_payload(
                    kind, str(record_id), stored, has_key_row, key_stored, self._key_wrap
                )
        return found

    def count_unshredded(self, before: datetime) -> int:
        """How many payloads of records received before `before` are still readable."""
        cutoff = purge_cutoff_text(before)
        total = 0
        for kind, (table, key, _) in LEAF_SOURCES.items():
            query = (
                f"SELECT COUNT(*) FROM {table} t"  # noqa: S608 (names from LEAF_SOURCES)
                f" LEFT JOIN payload_keys k ON k.kind = ? AND k.record_id = t.{key}"
                " WHERE (k.record_id IS NULL OR k.key IS NOT NULL)"
                f" AND t.{key} IN (SELECT id FROM requests WHERE received_at < ?)"
            )
            ((count,),) = self._read(query, (kind, cutoff))
            total += int(count)  # type: ignore[call-overload]
        return total

    def purge_payloads(self, before: datetime) -> PurgeResult:
        """Crypto-shred the payloads of every record received before `before`.

        An outcome goes with its request. A sealed payload loses its key; a plaintext one (stored
        before payloads were sealed) is overwritten. Deletes run with `secure_delete`, so freed
        bytes are zeroed, and the WAL is then truncated, so no older copy of a key is left in it.

        Safe beside a running proxy: each batch is one short write transaction, which the
        proxy's writer waits for like any other; the WAL truncation is tried without waiting
        (waiting would hold the proxy's writes back) until no reader holds the WAL.
        """
        cutoff = purge_cutoff_text(before)
        shredded_at = datetime.now(UTC).isoformat()
        self.file_staged()
        self._empty_idle_staging()
        with self._lock:
            self._conn.execute("PRAGMA secure_delete = ON")
            self._conn.execute("PRAGMA busy_timeout = 5000")
        shredded = 0
        after = -1
        while True:
            with self._lock:
                rows = self._conn.execute(
                    "SELECT seq FROM requests WHERE seq > ? AND received_at < ? ORDER BY seq"
                    " LIMIT ?",
                    (after, cutoff, PURGE_BATCH),
                ).fetchall()
                if not rows:
                    break
                first, after = int(rows[0][0]), int(rows[-1][0])
                shredded += self._shred_batch((first, after, cutoff), shredded_at)
        return PurgeResult(shredded, self._truncate_wal())

    def _empty_idle_staging(self) -> None:
        """With no live writer, empty the staging file: filed records' keys must not stay there.

        A live writer empties it itself once it has filed (within FILE_AFTER_S, or
        FILE_WAIT_MAX_S more while its server is never idle).
        """
        if self._staging is not None:
            return
        try:
            staging = StagingFile(self.staging_path)
        except (StagingLocked, OSError):
            return
        try:
            with self._lock:
                filed = self._staging_file_filed()
            if filed:
                staging.empty()
        finally:
            staging.close()

    def _shred_batch(self, scope: tuple[int, int, str], shredded_at: str) -> int:
        """One transaction: shred the payloads of requests `scope` selects, and their outcomes."""
        in_scope = "IN (SELECT id FROM requests WHERE seq BETWEEN ? AND ? AND received_at < ?)"
        shredded = 0
        with self._immediate():
            for kind, (table, key, payload) in LEAF_SOURCES.items():
                # Payloads stored before payloads were sealed (names from LEAF_SOURCES).
                unsealed = (
                    f"{table}.{key} {in_scope} AND NOT EXISTS (SELECT 1 FROM payload_keys k"  # noqa: S608
                    f" WHERE k.kind = ? AND k.record_id = {table}.{key})"
                )
                self._conn.execute(
                    f"UPDATE {table} SET {payload} = X'' WHERE {unsealed}",  # noqa: S608
                    (*scope, kind),
                )
                cursor = self._conn.execute(
                    "INSERT INTO payload_keys (kind, record_id, key, shredded_at)"  # noqa: S608
                    f" SELECT ?, {key}, NULL, ? FROM {table} WHERE {unsealed}",
                    (kind, shredded_at, *scope, kind),
                )
                shredded += cursor.rowcount
                cursor = self._conn.execute(
                    "UPDATE payload_keys SET key = NULL, shredded_at = ?"  # noqa: S608
                    f" WHERE kind = ? AND key IS NOT NULL AND record_id {in_scope}",
                    (shredded_at, kind, *scope),
                )
                shredded += cursor.rowcount
        return shredded

    def _truncate_wal(self) -> bool:
        """Checkpoint the whole WAL into the database and truncate it; False if readers kept it."""
        with self._lock:
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            self._conn.execute("PRAGMA busy_timeout = 0")
        try:
            for _ in range(PURGE_WAL_TRUNCATE_TRIES):
                with self._lock:
                    try:
                        (busy, _, _) = self._conn.execute(
                            "PRAGMA wal_checkpoint(TRUNCATE)"
                        ).fetchone()
                    except sqlite3.OperationalError:
                        busy = 1
                if not busy:
                    return True
                time.sleep(0.1)
            return False
        finally:
            with self._lock:
                self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    def checkpoints(self) -> list[Checkpoint]:
        """Every signed checkpoint, smallest first."""
        rows = self._read(f"SELECT {CHECKPOINT_COLUMNS} FROM checkpoints ORDER BY size")  # noqa: S608
        return [checkpoint_of(row) for row in rows]

    def checkpoints_from(self, size: int, limit: int = 1000) -> list[Checkpoint]:
        """Up to `limit` signed checkpoints of `size` records or more, smallest first."""
        rows = self._read(
            f"SELECT {CHECKPOINT_COLUMNS} FROM checkpoints"  # noqa: S608
            " WHERE size >= ? ORDER BY size LIMIT ?",
            (size, limit),
        )
        return [checkpoint_of(row) for row in rows]

    def signed_checkpoint(self, size: int | None = None) -> Checkpoint | None:
        """The checkpoint of `size` (the latest by default), or None."""
        rows = self._read(
            f"SELECT {CHECKPOINT_COLUMNS} FROM checkpoints"  # noqa: S608
            " WHERE size = ? OR ? IS NULL ORDER BY size DESC LIMIT 1",
            (size, size),
        )
        return checkpoint_of(rows[0]) if rows else None

    def _read(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        self.file_staged()
        with self._lock:
            return self._conn.execute(sql, params).fetchall()


def checkpoint_of(row: Sequence[object]) -> Checkpoint:
    """A checkpoint from (log_id, size, root, time, signature, key_id)."""
    log_id, size, root, time_, signature, key_id = row
    return Checkpoint(
        str(log_id),
        int(str(size)),
        str(root),
        str(time_),
        str(signature),
        None if key_id is None else str(key_id),
    )


def transition_of(row: Sequence[object]) -> KeyTransition:
    log_id, from_key_id, to_public_key, size, root, time_, from_sig, to_sig = row
    return KeyTransition(
        str(log_id),
        str(from_key_id),
        str(to_public_key),
        int(str(size)),
        str(root),
        str(time_),
        str(from_sig),
        str(to_sig),
    )


def same_hand_over(done: KeyTransition, incoming: Signer) -> KeyTransition:
    """A rotation run again: it must be the hand-over already made, to the same key."""
    if done.to_public_key != incoming.public_key.hex():
        raise AuditStoreUnavailable(
            f"the signing key {done.from_key_id[:16]} was already rotated out, to key "
            f"{done.to_key_id[:16]}; rotate from the current key"
        )
    return done


def check_current(outgoing: Signer, last: KeyTransition | None) -> None:
    """A rotation starts from the log's current key: its own, or the last one handed to."""
    current = last.to_key_id if last is not None else outgoing.log_id
    if current != outgoing.key_id:
        raise AuditStoreUnavailable(
            f"the signing key in this data dir ({outgoing.key_id[:16]}) is not the log's current "
            f"one ({current[:16]}); rotate from the data dir that holds the current key"
        )


def retired_key_message(signer: Signer, where: str, size: int, follows: Path | None = None) -> str:
    """Why a retired key may not sign, and what to do. A proxy that `follows` a data dir takes up
    the current key when its files appear there; any other must be restarted with them."""
    then = (
        f"into {follows}: it signs on with them at its next checkpoint, with no restart"
        if follows is not None
        else "and restart it"
    )
    return (
        f"this proxy's signing key {signer.key_id[:16]} was rotated out of the audit log in "
        f"{where} at size {size}, so it signs no more checkpoints there: copy the current "
        "audit-signing-key.pem (with audit-log-key.pub and audit-retired-keys.json) from the "
        f"data dir where `bastion audit rotate-key` ran {then} (if the rotation ran in this data "
        "dir and stopped half-way, run it again to finish it)"
    )


def contiguous_tiles(rows: Sequence[Sequence[object]]) -> list[bytes]:
    """(idx, hash) rows in order, as hashes, up to the first missing index."""
    tiles: list[bytes] = []
    for idx, digest in rows:
        if idx != len(tiles) or not isinstance(digest, bytes | bytearray | memoryview):
            break
        tiles.append(bytes(digest))
    return tiles
