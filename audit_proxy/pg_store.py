"""The audit store on PostgreSQL: one Merkle log shared by several proxy replicas.

It offers the same API as the SQLite `AuditStore` (see the top of `audit_proxy.store`): the async
`record_request` / `record_outcome` return once the record and its leaf are committed, and raise
`AuditStoreUnavailable` when they cannot be (the proxy then answers 503 and forwards nothing);
the read methods serve export, verify, prove and tail.

How replicas share one log:

- Every append runs in a transaction that first takes `pg_advisory_xact_lock(APPEND_LOCK)`, then
  reads `MAX(seq) + 1` and inserts the records and their leaves. The lock is held until COMMIT,
  so committed leaves always form one gapless sequence 0..N-1, in commit order, whichever replica
  wrote them. A replica killed mid-transaction holds nothing: PostgreSQL rolls it back.
- Each replica has one writer thread (psycopg is blocking; the event loop never waits on the
  database) that drains whatever is queued into one transaction: concurrent requests share the
  lock, the round trips and the commit's WAL flush.
- Any replica may sign a checkpoint: under the same lock it extends its own frontier with the
  leaves committed since it last looked (its own and the others'), and signs unless a checkpoint
  of that size exists. Replicas share the signing key (the same `audit-signing-key.pem` in each
  data dir); the database remembers the log's key, and a replica with another key refuses to
  start. After `bastion audit rotate-key`, a replica on the retired key records on but signs
  nothing until the new key files are in its data dir; it then signs on with them, no restart.
- The schema is migrated at start (`audit_proxy.pg_migrations`), under an advisory lock.

Payloads are sealed as in the SQLite store: each under its own key in `payload_keys`, written in
the same transaction as its record and leaf, so `purge_payloads` can crypto-shred old payloads
while every leaf stays provable. Rows written before schema v3 keep their plaintext payload (no
key row) and read as they are.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from audit_proxy.checkpoints import (
    CHECKPOINT_EVERY_RECORDS,
    CHECKPOINT_EVERY_S,
    Checkpoint,
    KeyTransition,
    Signer,
    SigningKeyError,
)
from audit_proxy.merkle import Frontier, canonical_json, leaf_hash
from audit_proxy.payload_crypto import KeyWrap, rewrapped_or_kept, seal, stored_key
from audit_proxy.pg_connection import Conn, LiveConnection
from audit_proxy.pg_limits import PostgresUsageBoard
from audit_proxy.pg_migrations import (
    APPEND_LOCK,
    SIEM_LOCK,
    SchemaError,
    migrate,
    schema_version,
)

# The SQLite store's readers of a row with its key row: one place decides what a key row means.
from audit_proxy.store import (
    CHECKPOINT_COLUMNS,
    LEAF_SOURCES,
    NO_PAYLOAD,
    PAYLOAD_READ_BATCH,
    PURGE_BATCH,
    TRANSITION_COLUMNS,
    AbortedBy,
    AuditStoreUnavailable,
    OutcomeRecord,
    PurgeResult,
    RequestRecord,
    StoredPayload,
    TokenUsage,
    check_current,
    checkpoint_of,
    contiguous_tiles,
    new_record_id,
    open_payload,
    outcome_from_row,
    outcome_row,
    purge_cutoff_text,
    request_from_row,
    request_row,
    retired_key_message,
    same_hand_over,
    transition_of,
)

log = logging.getLogger("bastion.proxy")

Leaf = tuple[int, str, str, bytes, bytes]

GROUP_MAX = 256
CONNECT_TIMEOUT_S = 5
# A statement stuck longer than this (a lost connection, a lock held by a hung replica) fails the
# request with 503 rather than holding it forever.
STATEMENT_TIMEOUT_MS = 10_000
SIGN_WAIT_S = 30.0

_INSERT_REQUEST = (
    'INSERT INTO requests (id, received_at, "user", role, client, method, route, feature,'
    " model, stream, body_sha256, body_size, body, policy)"
    " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) RETURNING *"
)
_INSERT_OUTCOME = (
    "INSERT INTO outcomes (request_id, finished_at, status, bytes_out, sha256,"
    " response_body, prompt_tokens, completion_tokens, total_tokens, finish_reason,"
    " latency_ms, ttfb_ms, aborted_by, completed, error)"
    " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) RETURNING *"
)
_INSERT_LEAF = (
    "INSERT INTO leaves (seq, kind, record_id, leaf_hash, canonical) VALUES (%s,%s,%s,%s,%s)"
)
_INSERT_PAYLOAD_KEY = "INSERT INTO payload_keys (kind, record_id, key) VALUES (%s,%s,%s)"
# Every read of a payload also reads its key row: {keys} is (has a key row, key), {join} finds it.
_SELECT_REQUESTS = (
    'SELECT r.seq, r.id, r.received_at, r."user", r.role, r.client, r.method, r.route,'
    " r.feature, r.model, r.stream, r.body_sha256, r.body_size, r.body, r.policy{keys}"
    " FROM requests r{join}"
)
_SELECT_OUTCOMES = (
    "SELECT o.request_id, o.finished_at, o.status, o.bytes_out, o.sha256, o.response_body,"
    " o.prompt_tokens, o.completion_tokens, o.total_tokens, o.finish_reason, o.latency_ms,"
    " o.ttfb_ms, o.aborted_by, o.completed, o.error{keys} FROM outcomes o{join}"
)
# `received_at` is ISO 8601 text in UTC: compared COLLATE "C", byte order is time order
# whatever the database's collation.


def successor_problem(retired: Signer, candidate: Signer, last: KeyTransition | None) -> str | None:
    """Why `candidate` may not sign in place of the `retired` key of a log whose last key
    transition is `last`, or None when it may."""
    if candidate.log_id != retired.log_id:
        return (
            f"it names another log ({candidate.log_id[:16]}, not {retired.log_id[:16]}): copy "
            "audit-log-key.pub beside it"
        )
    if last is None or candidate.key_id != last.to_key_id:
        return f"key {candidate.key_id[:16]} is not the log's current key"
    if all(r.key_id != retired.key_id for r in candidate.retired):
        return (
            "audit-retired-keys.json beside it does not name the retired key, so the payload "
            "keys it wrapped would not open: copy that file too"
        )
    return None


def _last_transition(cur: psycopg.Cursor[Any]) -> KeyTransition | None:
    """The log's latest hand-over of its signing key, if any."""
    cur.execute(
        f"SELECT {TRANSITION_COLUMNS} FROM key_transitions ORDER BY seq DESC LIMIT 1"  # noqa: S608
    )
    last = cur.fetchone()
    return transition_of(last) if last is not None else None


def redact_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" if parts.username else f"***@{host}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(slots=True)
class _Record:
    """One record waiting for the writer, and its caller's future."""

    kind: str
    record_id: str
    params: tuple[object, ...]
    payload_key: bytes = field(repr=False)
    loop: asyncio.AbstractEventLoop = field(repr=False)
    future: asyncio.Future[None] = field(repr=False)


@dataclass(slots=True)
class _Sign:
    """A request to sign a checkpoint now."""

    done: concurrent.futures.Future[Checkpoint | None]


class _Stop:
    """Tells the writer to finish."""


_Job = _Record | _Sign | _Stop


def _settle(results: list[tuple[asyncio.Future[None], BaseException | None]]) -> None:
    """On the callers' loop: resolve each future (a caller may have stopped waiting)."""
    for future, error in results:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


def _settle_all(items: Sequence[tuple[_Record, BaseException | None]]) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[None], Any]]] = {}
    for item, error in items:
        by_loop.setdefault(item.loop, []).append((item.future, error))
    for loop, results in by_loop.items():
        # A closed loop raises RuntimeError: nobody is waiting there any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle, results)


def _key_columns(kind: str, alias: str, key: str, sealed: bool) -> dict[str, str]:
    """The {keys} and {join} of a payload read; before schema v3 there are no key rows."""
    if not sealed:
        return {"keys": ", FALSE, NULL::bytea", "join": ""}
    return {
        "keys": ", k.record_id IS NOT NULL, k.key",
        "join": f" LEFT JOIN payload_keys k ON k.kind = '{kind}' AND k.record_id = {alias}.{key}",
    }


def _leaf_bytes(kind: str, stored: dict[str, object], seq: int) -> bytes:
    """The leaf of a row as stored: the same canonical JSON the SQLite store makes."""
    _, _, payload = LEAF_SOURCES[kind]
    # The payload is bound by its hash in the row; `seq` is the requests table's own counter.
    stored.pop(payload)
    if kind == "request":
        stored.pop("seq", None)
    record = {k: v.hex() if isinstance(v, bytes) else v for k, v in stored.items()}
    return canonical_json({"kind": kind, "record": record, "seq": seq})


class PostgresAuditStore:
    """The audit log in a PostgreSQL database that any number of proxy replicas share."""

    def __init__(
        self,
        url: str,
        password: str | None = None,
        signer: Signer | None = None,
        checkpoint_every: int = CHECKPOINT_EVERY_RECORDS,
        checkpoint_every_s: float = CHECKPOINT_EVERY_S,
        migrate_schema: bool = True,
        key_wrap: KeyWrap | None = None,
        key_dir: Path | None = None,
    ) -> None:
        """Connect, migrate the schema (unless `migrate_schema` is off: readers) and start.

        `password` overrides any in the URL. With a `signer` the store signs checkpoints and
        binds the database to that key. `key_wrap` (by default the signer's) wraps the payload
        keys it writes and unwraps those it reads. Once the signer is rotated out, the log's
        current key is taken up from `key_dir` (the proxy's data dir) when it appears there.
        Raises `AuditStoreUnavailable`.
        """
        self.where = redact_url(url)
        self._key_wrap = key_wrap or (signer.key_wrap() if signer is not None else None)
        self._wrap_follows_signer = key_wrap is None
        self._url = url
        self._password = password
        self.signer = signer
        self._key_dir = key_dir
        self._retired_warned = False
        self._refused_successors: set[str] = set()
        self._checkpoint_every = checkpoint_every
        self._frontier = Frontier()
        self.commits = 0
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._closed = False
        self._close_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._reader: Conn | None = None
        # Whether `payload_keys` exists (schema v3+); once true, true for good.
        self._sealed = migrate_schema
        self._writer = LiveConnection(self._connect)
        try:
            conn = self._writer.get()
            if migrate_schema:
                migrate(conn)
            elif schema_version(conn) == 0:
                raise AuditStoreUnavailable(f"no audit log in the database {self.where}")
            if signer is not None:
                self._bind_identity(conn, signer)
            (signed,) = self._one(conn, "SELECT COALESCE(MAX(size), 0) FROM checkpoints", ())
            self._signed_size = _int(signed)
        except SchemaError as exc:
            self._writer.drop()
            raise AuditStoreUnavailable(str(exc)) from exc
        except psycopg.Error as exc:
            self._writer.drop()
            raise self._unavailable("cannot open", exc) from exc
        except AuditStoreUnavailable:
            self._writer.drop()
            raise
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audit-pg-writer", daemon=True)
        self._thread.start()
        self._ticker: threading.Thread | None = None
        if signer is not None:
            # A replica that died may have left records no checkpoint covers.
            self._queue.put(_Sign(concurrent.futures.Future()))
            self._ticker = threading.Thread(
                target=self._tick, args=(checkpoint_every_s,), name="audit-pg-ticker", daemon=True
            )
            self._ticker.start()

    # -- the record API ------------------------------------------------------------------------

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
        """Durably record a request before it is forwarded; returns its id."""
        request_id = new_record_id()
        sealed = seal("request", request_id, body)
        params = request_row(
            request_id, body, sealed.stored, user, role, client, method, route, feature, model,
            stream, policy,
        )  # fmt: skip
        await self._append("request", request_id, params, stored_key(sealed.key, self._key_wrap))
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
        sealed = seal("outcome", request_id, response_body)
        params = outcome_row(
            request_id, response_body, sealed.stored, status, sha256, usage, finish_reason,
            latency_ms, ttfb_ms, aborted_by, completed, error,
        )  # fmt: skip
        await self._append("outcome", request_id, params, stored_key(sealed.key, self._key_wrap))

    async def _append(
        self, kind: str, record_id: str, params: tuple[object, ...], payload_key: bytes
    ) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._close_lock:
            if self._closed or not self._thread.is_alive():
                raise AuditStoreUnavailable(f"the audit store {self.where} is closed")
            self._queue.put(_Record(kind, record_id, params, payload_key, loop, future))
        # A cancelled caller only stops waiting: the record is still committed.
        await future

    # -- checkpoints and shutdown ---------------------------------------------------------------

    def checkpoint(self) -> Checkpoint | None:
        """Sign the current tree head if the log grew since the last checkpoint (any replica's)."""
        if self.signer is None:
            raise AuditStoreUnavailable("this audit store has no signing key")
        done: concurrent.futures.Future[Checkpoint | None] = concurrent.futures.Future()
        with self._close_lock:
            if self._closed or not self._thread.is_alive():
                raise AuditStoreUnavailable(f"the audit store {self.where} is closed")
            self._queue.put(_Sign(done))
        try:
            return done.result(SIGN_WAIT_S)
        except concurrent.futures.TimeoutError as exc:
            raise AuditStoreUnavailable(f"signing timed out on {self.where}") from exc

    def close(self) -> None:
        """Commit what is queued, sign a last checkpoint (when signing) and disconnect."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            if self.signer is not None:
                self._queue.put(_Sign(concurrent.futures.Future()))
            self._queue.put(_Stop())
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(5)
        self._thread.join(SIGN_WAIT_S)
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    def _tick(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self._queue.put(_Sign(concurrent.futures.Future()))

    # -- the writer thread ----------------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            jobs = [self._queue.get()]
            while len(jobs) < GROUP_MAX:
                try:
                    jobs.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            records = [job for job in jobs if isinstance(job, _Record)]
            signs = [job for job in jobs if isinstance(job, _Sign)]
            stopping = any(isinstance(job, _Stop) for job in jobs)
            due = False
            if records:
                due = self._write_group(records)
            if signs or (due and self.signer is not None):
                self._sign_for(signs)
        self._writer.drop()

    def _write_group(self, group: list[_Record]) -> bool:
        """Commit a group of records in one transaction; True when a checkpoint is due."""
        try:
            conn = self._writer.get()
            try:
                next_seq = self._commit(conn, group)
                errors: list[BaseException | None] = [None] * len(group)
            except psycopg.OperationalError:
                raise
            except psycopg.Error:
                # One bad record (a duplicate outcome, say) must not sink the others.
                errors, next_seq = [], 0
                for item in group:
                    try:
                        next_seq = self._commit(conn, [item])
                        errors.append(None)
                    except psycopg.OperationalError:
                        raise
                    except psycopg.Error as exc:
                        errors.append(self._unavailable("cannot write to", exc))
        except Exception as exc:  # the database is gone: fail closed, reconnect next time
            self._writer.drop()
            error = (
                exc
                if isinstance(exc, AuditStoreUnavailable)
                else self._unavailable("cannot write to", exc)
            )
            _settle_all([(item, error) for item in group])
            return False
        _settle_all(list(zip(group, errors, strict=True)))
        return next_seq - self._signed_size >= self._checkpoint_every

    def _commit(self, conn: Conn, group: list[_Record]) -> int:
        """One transaction: the rows, then, under the append lock, their leaves; the next seq.

        Pipelined: the rows go in one round trip, their key rows, the lock and MAX(seq) in a
        second, the leaves and COMMIT in a third. The lock is taken after the rows are in
        (nobody sees them before COMMIT anyway), so it is held only for the leaves and the commit.
        """
        with conn.pipeline(), conn.transaction(), conn.cursor() as cur:
            stored: list[tuple[_Record, dict[str, object]]] = []
            for kind, sql in (("request", _INSERT_REQUEST), ("outcome", _INSERT_OUTCOME)):
                items = [item for item in group if item.kind == kind]
                if not items:
                    continue
                cur.executemany(sql, [item.params for item in items], returning=True)
                for item in items:
                    names = [column.name for column in cur.description or ()]
                    row = cur.fetchone()
                    if row is None:
                        raise AuditStoreUnavailable(f"no row back for {item.kind} {item.record_id}")
                    stored.append((item, dict(zip(names, row, strict=True))))
                    cur.nextset()
            cur.executemany(
                _INSERT_PAYLOAD_KEY,
                [(item.kind, item.record_id, item.payload_key) for item, _ in stored],
            )
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))
            # A statement of its own: its snapshot is taken once the lock is granted.
            cur.execute("SELECT COALESCE(MAX(seq), -1) + 1 FROM leaves")
            first = cur.fetchone()
            seq = int(first[0]) if first is not None else 0
            leaves: list[tuple[int, str, str, bytes, bytes]] = []
            for item, columns in stored:
                data = _leaf_bytes(item.kind, columns, seq)
                leaves.append((seq, item.kind, item.record_id, leaf_hash(data), data))
                seq += 1
            cur.executemany(_INSERT_LEAF, leaves)
        self.commits += 1
        return seq

    def _sign_for(self, signs: list[_Sign]) -> None:
        error: AuditStoreUnavailable | None = None
        result: Checkpoint | None = None
        try:
            result = self._sign(self._writer.get())
        except AuditStoreUnavailable as exc:
            error = exc
        except Exception as exc:
            self._writer.drop()
            error = self._unavailable("cannot sign in", exc)
        if error is not None:
            log.error("checkpoint failed: %s", error)
        for sign in signs:
            if not sign.done.set_running_or_notify_cancel():
                continue
            if error is None:
                sign.done.set_result(result)
            else:
                sign.done.set_exception(error)

    def _sign(self, conn: Conn) -> Checkpoint | None:
        """Under the append lock: catch the frontier up with the table and sign if it grew."""
        assert self.signer is not None
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))
            # Committed leaves never change, so the frontier may keep them even if this
            # transaction fails.
            self._frontier = self._caught_up(cur, self._frontier)
            cur.execute("SELECT COALESCE(MAX(size), 0) FROM checkpoints")
            signed_row = cur.fetchone()
            signed = int(signed_row[0]) if signed_row is not None else 0
            size = self._frontier.size
            if size == 0 or size <= signed:
                self._signed_size = max(self._signed_size, signed)
                return None
            cur.execute(
                "SELECT size FROM key_transitions WHERE from_key_id = %s", (self.signer.key_id,)
            )
            retired = cur.fetchone()
            if retired is not None and not self._follow_rotation(cur, int(retired[0])):
                return None
            checkpoint = self.signer.sign(size, self._frontier.root())
            _insert_checkpoint(cur, checkpoint, self._frontier)
        self._signed_size = size
        return checkpoint

    def _follow_rotation(self, cur: psycopg.Cursor[Any], retired_at: int) -> bool:
        """This replica's key was rotated out at `retired_at`: take up the log's current key if
        its files are now in the data dir (True), else say once what to do (False)."""
        assert self.signer is not None
        successor = self._successor(cur)
        if successor is None:
            if not self._retired_warned:
                self._retired_warned = True
                log.critical(
                    "%s", retired_key_message(self.signer, self.where, retired_at, self._key_dir)
                )
            return False
        log.warning(
            "signing key %s was rotated out of the audit log in %s at size %d; this replica now "
            "signs with %s from %s",
            self.signer.key_id[:16], self.where, retired_at, successor.key_id[:16], self._key_dir,
        )  # fmt: skip
        self.signer = successor
        if self._wrap_follows_signer:
            self._key_wrap = successor.key_wrap()
        self._retired_warned = False
        return True

    def _successor(self, cur: psycopg.Cursor[Any]) -> Signer | None:
        """The key now in the data dir, if it may take over from this replica's retired one."""
        assert self.signer is not None
        if self._key_dir is None:
            return None
        try:
            candidate = Signer.load(self._key_dir)
        except SigningKeyError as exc:
            self._refuse_successor(str(exc))
            return None
        if candidate.key_id == self.signer.key_id:
            return None
        problem = successor_problem(self.signer, candidate, _last_transition(cur))
        if problem is not None:
            self._refuse_successor(problem)
            return None
        return candidate

    def _refuse_successor(self, why: str) -> None:
        if why not in self._refused_successors:  # once, not at every tick
            self._refused_successors.add(why)
            log.error(
                "the signing key now in %s cannot take over from this replica's retired one: %s",
                self._key_dir, why,
            )  # fmt: skip

    def _caught_up(self, cur: psycopg.Cursor[Any], frontier: Frontier) -> Frontier:
        """Under the append lock: `frontier` extended with every leaf after it. A new one
        starts from the frontier the last checkpoint saved, not from the first leaf."""
        if frontier.size == 0:
            cur.execute(
                "SELECT f.size, f.packed, c.root FROM frontier f"
                " JOIN checkpoints c ON c.size = f.size"
            )
            saved = cur.fetchone()
            if saved is not None:
                packed = bytes(saved[1])
                frontier = Frontier.unpacked(int(saved[0]), packed, str(saved[2])) or frontier
        cur.execute(
            "SELECT seq, leaf_hash FROM leaves WHERE seq >= %s ORDER BY seq", (frontier.size,)
        )
        for seq, digest in cur:
            if seq != frontier.size:
                raise AuditStoreUnavailable(
                    f"the audit log in {self.where} has a gap at seq {frontier.size}"
                )
            frontier.append(bytes(digest))
        return frontier

    def _bind_identity(self, conn: Conn, signer: Signer) -> None:
        with conn.transaction():
            conn.execute(
                "INSERT INTO log_identity (log_id, public_key) VALUES (%s, %s)"
                " ON CONFLICT DO NOTHING",
                (signer.log_id, signer.log_public_key.hex()),
            )
            (log_id,) = self._one(conn, "SELECT log_id FROM log_identity", ())
            handed_over = conn.execute(
                "SELECT from_key_id, to_public_key, size FROM key_transitions ORDER BY seq"
            ).fetchall()
        if log_id != signer.log_id:
            raise AuditStoreUnavailable(
                f"the audit log in {self.where} is signed by key {log_id}, but this proxy's "
                f"signing key is {signer.log_id}; give every replica the same "
                "audit-signing-key.pem (and, after a rotation, audit-log-key.pub) in its data dir"
            )
        for from_key_id, _, size in handed_over:
            if from_key_id == signer.key_id:
                raise AuditStoreUnavailable(retired_key_message(signer, self.where, int(size)))
        current = bytes.fromhex(str(handed_over[-1][1])) if handed_over else signer.log_public_key
        if current != signer.public_key:
            raise AuditStoreUnavailable(
                f"this proxy's signing key {signer.key_id[:16]} is not the current key of the "
                f"audit log in {self.where}; copy audit-signing-key.pem, audit-log-key.pub and "
                "audit-retired-keys.json from the data dir where `bastion audit rotate-key` ran"
            )

    def rotate_signing_key(self, outgoing: Signer, incoming: Signer) -> KeyTransition:
        """Hand the log's signing from `outgoing` to `incoming` (`bastion audit rotate-key`).

        One transaction under the append lock, so that it falls between two replicas' appends:
        a checkpoint of the whole log by the outgoing key (when it grew), and the transition
        both keys sign. Replicas still on the outgoing key keep appending but sign no more
        checkpoints (they log why) until they get the new key. Run again after the same
        hand-over it returns the transition already made. Raises `AuditStoreUnavailable`.
        """
        conn = self._connect()
        try:
            migrate(conn)
            with conn.transaction(), conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))
                cur.execute(
                    f"SELECT {TRANSITION_COLUMNS} FROM key_transitions"  # noqa: S608
                    " WHERE from_key_id = %s",
                    (outgoing.key_id,),
                )
                done = cur.fetchone()
                if done is not None:
                    return same_hand_over(transition_of(done), incoming)
                check_current(outgoing, _last_transition(cur))
                frontier = self._caught_up(cur, Frontier())
                size, root = frontier.size, frontier.root()
                cur.execute("SELECT COALESCE(MAX(size), 0) FROM checkpoints")
                signed_row = cur.fetchone()
                if size > (int(signed_row[0]) if signed_row is not None else 0):
                    _insert_checkpoint(cur, outgoing.sign(size, root), frontier)
                transition = outgoing.hand_over(incoming, size, root)
                cur.execute(
                    f"INSERT INTO key_transitions ({TRANSITION_COLUMNS})"  # noqa: S608
                    " VALUES (%s,%s,%s,%s,%s,%s,%s,%s)",
                    tuple(transition.as_dict().values()),
                )
            return transition
        except SchemaError as exc:
            raise AuditStoreUnavailable(str(exc)) from exc
        except psycopg.Error as exc:
            raise self._unavailable("cannot record the key rotation in", exc) from exc
        finally:
            conn.close()

    def key_transitions(self) -> list[KeyTransition]:
        """Every hand-over of the log's signing key, oldest first."""
        if not self._has_key_transitions():
            return []
        rows = self._read(
            f"SELECT {TRANSITION_COLUMNS} FROM key_transitions ORDER BY seq"  # noqa: S608
        )
        return [transition_of(row) for row in rows]

    def _has_key_transitions(self) -> bool:
        """Whether the schema is at v6 (key rotation, tiles) yet: readers do not migrate."""
        (found,) = self._read("SELECT to_regclass('key_transitions') IS NOT NULL")[0]
        return bool(found)

    def _checkpoint_columns(self) -> str:
        """`CHECKPOINT_COLUMNS`, with a NULL `key_id` before v6."""
        if self._has_key_transitions():
            return CHECKPOINT_COLUMNS
        return CHECKPOINT_COLUMNS.replace("key_id", "NULL")

    def rewrap_payload_keys(self, old: KeyWrap | None, new: KeyWrap) -> int:
        """Wrap every stored payload key under `new`, in batches; returns how many changed.

        Keys a replica on the outgoing key writes later stay under the old key-encryption key
        (readable through the retired keys); running this again wraps them too. As with a purge
        (see `purge_payloads`), PostgreSQL keeps old row versions until VACUUM, and its WAL and
        backups keep them longer.
        """
        self._key_wrap = new  # first: keys this store writes meanwhile need no second pass
        conn = self._connect()
        changed = 0
        after = ("", "")
        try:
            while True:
                rows = conn.execute(
                    "SELECT kind, record_id, key FROM payload_keys"
                    " WHERE (kind, record_id) > (%s, %s) AND key IS NOT NULL"
                    " ORDER BY kind, record_id LIMIT %s",
                    (*after, PURGE_BATCH),
                ).fetchall()
                if not rows:
                    break
                after = (str(rows[-1][0]), str(rows[-1][1]))
                updates = [
                    (stored, kind, record_id)
                    for kind, record_id, key in rows
                    if (stored := rewrapped_or_kept(bytes(key), old, new, (kind, record_id)))
                    is not None
                ]
                if updates:
                    with conn.transaction(), conn.cursor() as cur:
                        cur.executemany(
                            "UPDATE payload_keys SET key = %s WHERE kind = %s AND record_id = %s",
                            updates,
                        )
                    changed += len(updates)
            _vacuum(conn, ("payload_keys",))
        except psycopg.Error as exc:
            raise self._unavailable("cannot wrap the payload keys anew in", exc) from exc
        finally:
            conn.close()
        return changed

    # -- connections ------------------------------------------------------------------------------

    def _connect(self) -> Conn:
        extra: dict[str, Any] = {} if self._password is None else {"password": self._password}
        try:
            return psycopg.connect(
                self._url,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT_S,
                application_name="bastion-proxy",
                options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
                keepalives=1,
                keepalives_idle=10,
                keepalives_interval=5,
                keepalives_count=3,
                **extra,
            )
        except psycopg.Error as exc:
            raise self._unavailable("cannot connect to", exc) from exc

    def _unavailable(self, doing: str, exc: BaseException) -> AuditStoreUnavailable:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return AuditStoreUnavailable(f"the audit store {doing} {self.where}: {detail}")

    @staticmethod
    def _one(conn: Conn, sql: str, params: tuple[object, ...]) -> tuple[object, ...]:
        row = conn.execute(sql.encode(), params).fetchone()
        if row is None:
            raise AuditStoreUnavailable(f"no row from: {sql}")
        return tuple(row)

    def _read(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with self._read_lock:
            for attempt in (1, 2):
                if self._reader is None or self._reader.closed or self._reader.broken:
                    self._reader = self._connect()
                try:
                    return [tuple(row) for row in self._reader.execute(sql.encode(), params)]
                except psycopg.OperationalError as exc:
                    self._reader.close()
                    self._reader = None
                    if attempt == 2:
                        raise self._unavailable("cannot read from", exc) from exc
                except psycopg.Error as exc:
                    raise self._unavailable("cannot read from", exc) from exc
        raise AssertionError("unreachable")

    # -- reads (export, verify, prove, tail) ------------------------------------------------------

    def _has_payload_keys(self) -> bool:
        """Whether the schema has `payload_keys` yet (v3): a reader may open an older one."""
        if not self._sealed:
            ((found,),) = self._read("SELECT to_regclass('payload_keys') IS NOT NULL")
            self._sealed = bool(found)
        return self._sealed

    def _select_requests(self) -> str:
        return _SELECT_REQUESTS.format(
            **_key_columns("request", "r", "id", self._has_payload_keys())
        )

    def _select_outcomes(self) -> str:
        return _SELECT_OUTCOMES.format(
            **_key_columns("outcome", "o", "request_id", self._has_payload_keys())
        )

    def requests(self) -> list[RequestRecord]:
        """Every request record, oldest first; a shredded payload reads as None."""
        return [
            request_from_row(row, self._key_wrap)
            for row in self._read(self._select_requests() + " ORDER BY r.seq")
        ]

    def outcomes(self) -> list[OutcomeRecord]:
        """Every outcome record, in the order of their requests."""
        rows = self._read(
            self._select_outcomes() + " JOIN requests r ON r.id = o.request_id ORDER BY r.seq"
        )
        return [outcome_from_row(row, self._key_wrap) for row in rows]

    def outcome(self, request_id: str) -> OutcomeRecord | None:
        """The outcome of one request, or None while it is still running (or was lost)."""
        rows = self._read(self._select_outcomes() + " WHERE o.request_id = %s", (request_id,))
        return outcome_from_row(rows[0], self._key_wrap) if rows else None

    def leaves(self, limit: int | None = None) -> list[Leaf]:
        """(seq, kind, record id, leaf hash, canonical bytes) of the first `limit` leaves."""
        rows = self._read(
            "SELECT seq, kind, record_id, leaf_hash, canonical FROM leaves ORDER BY seq LIMIT %s",
            (limit,),
        )
        return [_leaf_row(row) for row in rows]

    def leaves_from(self, seq: int, limit: int = 1000) -> list[Leaf]:
        """Up to `limit` leaves from `seq` on."""
        rows = self._read(
            "SELECT seq, kind, record_id, leaf_hash, canonical FROM leaves WHERE seq >= %s"
            " ORDER BY seq LIMIT %s",
            (seq, limit),
        )
        return [_leaf_row(row) for row in rows]

    def leaf_hashes(self, size: int | None = None) -> list[bytes]:
        """The leaf hashes of the first `size` leaves (all by default)."""
        rows = self._read("SELECT leaf_hash FROM leaves ORDER BY seq LIMIT %s", (size,))
        return [_bytes(row[0]) for row in rows]

    def leaf_hashes_between(self, start: int, end: int) -> list[bytes]:
        """The leaf hashes of seq `start` up to (not including) `end`."""
        rows = self._read(
            "SELECT leaf_hash FROM leaves WHERE seq >= %s AND seq < %s ORDER BY seq", (start, end)
        )
        return [_bytes(row[0]) for row in rows]

    def saved_tiles(self, count: int) -> list[bytes]:
        """The kept hashes of the first `count` tiles, up to the first one missing."""
        if not self._has_key_transitions():
            return []
        rows = self._read("SELECT idx, hash FROM tiles WHERE idx < %s ORDER BY idx", (count,))
        return contiguous_tiles(rows)

    def save_tiles(self, first: int, hashes: Sequence[bytes]) -> None:
        """Keep tile hashes from tile `first` on; a role that cannot write keeps none."""
        try:
            with (
                contextlib.closing(self._connect()) as conn,
                conn.transaction(),
                conn.cursor() as cur,
            ):
                cur.executemany(
                    "INSERT INTO tiles (idx, hash) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                    [(first + i, digest) for i, digest in enumerate(hashes)],
                )
        except (psycopg.Error, AuditStoreUnavailable) as exc:
            log.info("tile hashes of %s not kept (%s): proofs compute them again", self.where, exc)

    def payload(self, kind: str, record_id: str) -> bytes | None:
        """The payload a leaf binds by hash, or None where it is gone (shredded)."""
        return self.stored_payload(kind, record_id).data

    def stored_payload(self, kind: str, record_id: str) -> StoredPayload:
        """The payload a leaf binds by hash, and whether it was shredded."""
        return self.stored_payloads(kind, [record_id]).get(record_id, NO_PAYLOAD)

    def stored_payloads(self, kind: str, record_ids: Sequence[str]) -> dict[str, StoredPayload]:
        """`stored_payload` of many records of one kind, by record id (absent: no row)."""
        table, key, payload = LEAF_SOURCES[kind]
        parts = _key_columns(kind, "t", key, self._has_payload_keys())
        # Names from LEAF_SOURCES only; the ids are bound.
        query = (
            f"SELECT t.{key}, t.{payload}{parts['keys']}"  # noqa: S608
            f" FROM {table} t{parts['join']} WHERE t.{key} = ANY(%s)"
        )
        found: dict[str, StoredPayload] = {}
        for start in range(0, len(record_ids), PAYLOAD_READ_BATCH):
            rows = self._read(query, (list(record_ids[start : start + PAYLOAD_READ_BATCH]),))
            for record_id, stored, has_key_row, key_stored in rows:
                found[str(record_id)] = open_payload(
                    kind,
                    str(record_id),
                    _maybe_bytes(stored),
                    has_key_row,
                    _maybe_bytes(key_stored),
                    self._key_wrap,
                )
        return found

    def count_unshredded(self, before: datetime) -> int:
        """How many payloads of records received before `before` are still readable."""
        cutoff = purge_cutoff_text(before)
        sealed = self._has_payload_keys()
        total = 0
        for kind, (table, key, _) in LEAF_SOURCES.items():
            query = (
                f"SELECT COUNT(*) FROM {table} t"  # noqa: S608 (names from LEAF_SOURCES)
                f' WHERE t.{key} IN (SELECT id FROM requests WHERE received_at COLLATE "C" < %s)'
            )
            params: tuple[object, ...] = (cutoff,)
            if sealed:
                query += (
                    " AND NOT EXISTS (SELECT 1 FROM payload_keys k WHERE k.kind = %s"  # noqa: S608
                    f" AND k.record_id = t.{key} AND k.key IS NULL)"
                )
                params = (cutoff, kind)
            ((count,),) = self._read(query, params)
            total += _int(count)
        return total

    def purge_payloads(self, before: datetime) -> PurgeResult:
        """Crypto-shred the payloads of every record received before `before`; then VACUUM.

        An outcome goes with its request. A sealed payload loses its key (`key` set to NULL); a
        plaintext one (written before schema v3) is overwritten with empty bytes and gets a
        shredded key row. Each batch of `PURGE_BATCH` requests is one short transaction on a
        connection of its own. The schema is first brought to the latest version.

        What is gone, and what is not: once a batch commits, no query can read those keys or
        plaintexts again, except a transaction whose snapshot is older than the batch (it still
        sees the old row versions). The VACUUM that follows removes the dead row versions once
        no such snapshot remains; `PurgeResult.wal_truncated` is False when it could not (some
        were "dead but not yet removable"; on PostgreSQL before 15 the statistics behind this
        check arrive late, so it may miss some). Unlike SQLite's `secure_delete`, PostgreSQL
        never promises to overwrite the bytes on disk: a pruned page keeps the old bytes in its
        free space until new rows reuse it, and the WAL (with any archive, base backup or
        standby) keeps the keys as they were written until it is recycled or expires. The
        guarantee is the database's, not the disk's; retention of WAL archives and backups
        must be no longer than that of the payloads.

        No VACUUM FULL: it holds an ACCESS EXCLUSIVE lock on `payload_keys` for its whole run,
        which stops every replica's appends (each writes a key row), so requests would wait
        and, past the statement timeout, fail closed with 503; and it would not make the
        guarantee stronger, since it writes a new file and only unlinks the old one, whose
        blocks the file system frees without overwriting.

        Safe while replicas write: batches take row locks only on the key rows they null and
        the plaintext rows they overwrite. Replicas only insert rows for new records and never
        wait on those locks (an outcome's foreign-key check takes KEY SHARE on its request,
        which an update of the payload column does not block); plain VACUUM blocks no writer.
        An outcome of an old request committed after its batch keeps its key; `purge` again
        (or `count_unshredded`) finds it. Raises `AuditStoreUnavailable`.
        """
        cutoff = purge_cutoff_text(before)
        shredded_at = datetime.now(UTC).isoformat()
        conn = self._connect()
        try:
            migrate(conn)
            self._sealed = True
            shredded = overwritten = 0
            after = -1
            while True:
                rows = conn.execute(
                    'SELECT seq FROM requests WHERE seq > %s AND received_at COLLATE "C" < %s'
                    " ORDER BY seq LIMIT %s",
                    (after, cutoff, PURGE_BATCH),
                ).fetchall()
                if not rows:
                    break
                first, after = _int(rows[0][0]), _int(rows[-1][0])
                with conn.transaction():
                    keys, plaintexts = _shred_batch(conn, (first, after, cutoff), shredded_at)
                shredded += keys + plaintexts
                overwritten += plaintexts
            # Overwritten plaintexts left dead row versions in the record tables too.
            tables = ("payload_keys", "requests", "outcomes") if overwritten else ("payload_keys",)
            reclaimed = _vacuum(conn, tables)
        except SchemaError as exc:
            raise AuditStoreUnavailable(str(exc)) from exc
        except psycopg.Error as exc:
            raise self._unavailable("cannot purge", exc) from exc
        finally:
            conn.close()
        return PurgeResult(shredded, reclaimed)

    def usage_board(self) -> PostgresUsageBoard:
        """The board on which replicas share rate limits, on a connection of its own."""
        return PostgresUsageBoard(self._connect)

    def siem_coordination(self) -> tuple[PostgresSiemCursors, PostgresSiemLeadership]:
        """Cursors and leadership for SIEM export, shared by every replica of this log."""
        log_id = self.signer.log_id if self.signer is not None else ""
        leadership = PostgresSiemLeadership(self._connect)
        return PostgresSiemCursors(leadership, log_id), leadership

    def ask_siem_resend(self, log_id: str, sinks: Sequence[str], from_seq: int) -> None:
        """Ask the replica that ships (now, or the next to) to ship log `log_id` to each of
        `sinks` again from `from_seq`."""
        try:
            with contextlib.closing(self._connect()) as conn, conn.transaction():
                for sink in sinks:
                    conn.execute(
                        "INSERT INTO siem_resend (log_id, sink, from_seq) VALUES (%s, %s, %s)",
                        (log_id, sink, from_seq),
                    )
        except psycopg.errors.UndefinedTable:
            raise AuditStoreUnavailable(
                f"the audit database {self.where} predates SIEM resends; start a proxy of this "
                "release on it first (it upgrades the schema)"
            ) from None
        except psycopg.Error as exc:
            raise self._unavailable("cannot take a request in", exc) from exc

    def checkpoints(self) -> list[Checkpoint]:
        """Every signed checkpoint, smallest first."""
        rows = self._read(
            f"SELECT {self._checkpoint_columns()} FROM checkpoints ORDER BY size"  # noqa: S608
        )
        return [checkpoint_of(row) for row in rows]

    def checkpoints_from(self, size: int, limit: int = 1000) -> list[Checkpoint]:
        """Up to `limit` signed checkpoints of `size` records or more, smallest first."""
        rows = self._read(
            f"SELECT {self._checkpoint_columns()} FROM checkpoints"  # noqa: S608
            " WHERE size >= %s ORDER BY size LIMIT %s",
            (size, limit),
        )
        return [checkpoint_of(row) for row in rows]

    def signed_checkpoint(self, size: int | None = None) -> Checkpoint | None:
        """The checkpoint of `size` (the latest by default), or None."""
        where = "" if size is None else " WHERE size = %s"
        rows = self._read(
            f"SELECT {self._checkpoint_columns()} FROM checkpoints"  # noqa: S608
            f"{where} ORDER BY size DESC LIMIT 1",
            () if size is None else (size,),
        )
        return checkpoint_of(rows[0]) if rows else None


def _insert_checkpoint(
    cur: psycopg.Cursor[Any], checkpoint: Checkpoint, frontier: Frontier
) -> None:
    """Store a signed checkpoint and the frontier at its size (where a replica starts from)."""
    cur.execute(
        "INSERT INTO checkpoints (size, log_id, root, time, signature, key_id)"
        " VALUES (%s,%s,%s,%s,%s,%s)",
        checkpoint.as_row(),
    )
    cur.execute(
        "INSERT INTO frontier (only_row, size, packed) VALUES (TRUE, %s, %s)"
        " ON CONFLICT (only_row) DO UPDATE SET size = EXCLUDED.size, packed = EXCLUDED.packed"
        " WHERE frontier.size < EXCLUDED.size",
        (frontier.size, frontier.packed()),
    )


def _int(value: object) -> int:
    if not isinstance(value, int):
        raise AuditStoreUnavailable(f"expected an integer in the audit log, got {value!r}")
    return value


def _bytes(value: object) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise AuditStoreUnavailable(f"expected bytes in the audit log, got {type(value).__name__}")
    return bytes(value)


def _leaf_row(row: tuple[object, ...]) -> Leaf:
    seq, kind, record_id, digest, canonical = row
    return _int(seq), str(kind), str(record_id), _bytes(digest), _bytes(canonical)


def _maybe_bytes(value: object) -> object:
    """BYTEA as `bytes` (psycopg may hand back a memoryview); anything else as it is."""
    return bytes(value) if isinstance(value, bytearray | memoryview) else value


def _shred_batch(conn: Conn, scope: tuple[int, int, str], shredded_at: str) -> tuple[int, int]:
    """In a transaction: shred the payloads of the requests in `scope` (first seq, last seq,
    cutoff) and of their outcomes; returns (keys destroyed, plaintexts overwritten)."""
    in_scope = (
        'IN (SELECT id FROM requests WHERE seq BETWEEN %s AND %s AND received_at COLLATE "C" < %s)'
    )
    keys = plaintexts = 0
    for kind, (table, key, payload) in LEAF_SOURCES.items():
        # Payloads written before v3, in clear: overwrite them, record them as shredded. A
        # concurrent purge that got there first makes the insert a no-op (names: LEAF_SOURCES).
        cursor = conn.execute(
            (
                f"WITH overwritten AS (UPDATE {table} t SET {payload} = ''::bytea"  # noqa: S608
                f" WHERE t.{key} {in_scope} AND NOT EXISTS (SELECT 1 FROM payload_keys k"
                f" WHERE k.kind = %s AND k.record_id = t.{key}) RETURNING t.{key} AS record_id)"
                " INSERT INTO payload_keys (kind, record_id, key, shredded_at)"
                " SELECT %s, record_id, NULL, %s FROM overwritten ON CONFLICT DO NOTHING"
            ).encode(),
            (*scope, kind, kind, shredded_at),
        )
        plaintexts += max(cursor.rowcount, 0)
        cursor = conn.execute(
            (
                "UPDATE payload_keys SET key = NULL, shredded_at = %s"  # noqa: S608
                f" WHERE kind = %s AND key IS NOT NULL AND record_id {in_scope}"
            ).encode(),
            (shredded_at, kind, *scope),
        )
        keys += max(cursor.rowcount, 0)
    return keys, plaintexts


def _vacuum(conn: Conn, tables: Sequence[str]) -> bool:
    """VACUUM `tables` (autocommit `conn`); False when dead row versions were left behind."""
    if conn.info.server_version >= 150000:
        # Send our updates' pending dead-row counts now: sent after VACUUM has set the count,
        # they would read as rows it left behind.
        conn.execute("SELECT pg_stat_force_next_flush()")
    # VACUUM blocks no writer, and on a big table it may run for minutes.
    conn.execute("SET statement_timeout = 0")
    dead = 0
    for table in tables:
        conn.execute(f"VACUUM {table}".encode())
        ((left,),) = conn.execute("SELECT pg_stat_get_dead_tuples(%s::regclass)", (table,))
        dead += _int(left)
    return dead == 0


class PostgresSiemLeadership:
    """The SIEM lock (a session advisory lock) on a connection of its own.

    `leading()` tries to take the lock while another replica holds it, and checks that the
    connection (and with it the lock) is still alive while this replica holds it. A connection
    that fails loses the lock; the next call connects again and tries.
    """

    def __init__(self, connect: Callable[[], Conn]) -> None:
        self._live = LiveConnection(connect)
        self._held = False

    @property
    def conn(self) -> Conn | None:
        """The session that holds (or tries for) the lock; None while there is none."""
        return self._live.current

    def leading(self) -> bool:
        try:
            if self._live.current is None:
                self._held = False  # a new session holds no lock
            conn = self._live.get()
            if self._held:
                conn.execute("SELECT 1")
            else:
                row = conn.execute("SELECT pg_try_advisory_lock(%s)", (SIEM_LOCK,)).fetchone()
                self._held = bool(row and row[0])
        except (psycopg.Error, AuditStoreUnavailable) as exc:
            if self._held:
                log.warning("SIEM export: lost the database connection (%s); standing by", exc)
            self._drop()
        return self._held

    def _drop(self) -> None:
        self._held = False
        self._live.drop()

    def close(self) -> None:
        self._drop()  # ending the session releases the lock


class PostgresSiemCursors:
    """The sinks' cursors in `siem_cursors`, read and written by the leading replica."""

    def __init__(self, leadership: PostgresSiemLeadership, log_id: str) -> None:
        self._leadership = leadership
        self._log_id = log_id

    def _conn(self) -> Conn:
        if self._leadership.conn is None:
            raise OSError("no connection to the audit database")
        return self._leadership.conn

    def load(self, sink: str) -> int:
        conn = self._leadership.conn
        if conn is None:
            return 0  # not leading: read again on taking the lead
        row = conn.execute(
            "SELECT next_seq FROM siem_cursors WHERE log_id = %s AND sink = %s",
            (self._log_id, sink),
        ).fetchone()
        return int(row[0]) if row else 0

    def save(self, sink: str, next_seq: int) -> None:
        try:
            self._conn().execute(
                "INSERT INTO siem_cursors (log_id, sink, next_seq) VALUES (%s, %s, %s)"
                " ON CONFLICT (log_id, sink) DO UPDATE"
                " SET next_seq = GREATEST(siem_cursors.next_seq, EXCLUDED.next_seq)",
                (self._log_id, sink, next_seq),
            )
        except psycopg.Error as exc:
            raise OSError(f"cannot save the SIEM cursor: {exc}") from exc

    def rewind(self, sink: str, next_seq: int) -> None:
        try:
            self._conn().execute(
                "UPDATE siem_cursors SET next_seq = LEAST(next_seq, %s)"
                " WHERE log_id = %s AND sink = %s",
                (next_seq, self._log_id, sink),
            )
        except psycopg.Error as exc:
            raise OSError(f"cannot save the SIEM cursor: {exc}") from exc

    def take_resend(self, sink: str) -> int | None:
        conn = self._leadership.conn
        if conn is None:
            return None
        try:
            row = conn.execute(
                "SELECT MIN(from_seq) FROM siem_resend WHERE log_id = %s AND sink = %s",
                (self._log_id, sink),
            ).fetchone()
        except psycopg.Error as exc:
            log.warning("SIEM resend requests cannot be read now (%s); trying again", exc)
            return None
        return None if row is None or row[0] is None else int(row[0])

    def forget_resend(self, sink: str, from_seq: int) -> None:
        try:
            self._conn().execute(
                "DELETE FROM siem_resend WHERE log_id = %s AND sink = %s AND from_seq >= %s",
                (self._log_id, sink, from_seq),
            )
        except psycopg.Error as exc:
            raise OSError(f"cannot drop a SIEM resend request: {exc}") from exc
