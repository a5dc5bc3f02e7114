"""What leaves the audit store for outside parties: the JSONL export and proof documents.

An export holds, one JSON object a line: a header with the log's public key, every leaf (its
record, the exact canonical bytes, the writer's leaf hash and the payload where it is still
kept), then every signed checkpoint with a consistency proof from the one before it.
`audit_proxy.verify` checks it with nothing else.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TextIO
from urllib.parse import parse_qs

from audit_proxy import merkle
from audit_proxy.asgi import Receive, Scope, Send, send_error, send_json
from audit_proxy.checkpoints import (
    CHECKPOINT_EVERY_RECORDS,
    CHECKPOINT_EVERY_S,
    Checkpoint,
    Signer,
    SigningKeyError,
)
from audit_proxy.store import NO_PAYLOAD, AuditStore, AuditStoreUnavailable, StoredPayload

if TYPE_CHECKING:
    from audit_proxy.pg_store import PostgresAuditStore

EXPORT_FORMAT = "bastion-audit-export/1"
AUDIT_DB = "audit.sqlite3"
EXPORT_BATCH = 2000
# Tiles computed from one read of leaves (each read holds the store's lock for its length).
TILES_AT_ONCE = 256


class Exported(NamedTuple):
    """What an export holds: records, checkpoints, and how many records the last one covers."""

    records: int
    checkpoints: int
    signed_size: int

    def unsigned_tail_note(self) -> str | None:
        """What to tell the exporter when the export ends with records no checkpoint covers."""
        if self.signed_size >= self.records:
            return None
        return (
            f"records seq {self.signed_size}..{self.records - 1} are not yet under a signed "
            "checkpoint, so verify cannot vouch for them (verify --strict fails on them); the "
            f"proxy signs every {CHECKPOINT_EVERY_RECORDS:,} records or {CHECKPOINT_EVERY_S:g} s, "
            "and when it stops: export again after that to cover them"
        )


class ExportError(Exception):
    """The export or proof cannot be made; the message says why."""


@dataclass(frozen=True)
class AuditDatabase:
    """A PostgreSQL audit store; no password: the URL's, or libpq's own (PGPASSWORD, .pgpass)."""

    url: str
    password: str | None = field(default=None, repr=False)


def open_reader(
    data_dir: Path, database: AuditDatabase | None = None
) -> AuditStore | PostgresAuditStore:
    """The audit store to read: `database` when given, else the SQLite one in `data_dir`.

    Payloads open with the signing key in `data_dir` (their keys are wrapped under it).
    """
    if database is None:
        if not (data_dir / AUDIT_DB).exists():
            raise ExportError(f"no audit store in {data_dir}")
        try:
            return AuditStore(data_dir / AUDIT_DB)
        except AuditStoreUnavailable as exc:
            raise ExportError(str(exc)) from None
    try:
        key_wrap = Signer.key_wrap_in(data_dir)
    except SigningKeyError as exc:
        raise ExportError(str(exc)) from None
    try:
        from audit_proxy.pg_store import PostgresAuditStore
    except ImportError as exc:
        raise ExportError(
            f"a PostgreSQL audit store needs psycopg ({exc}): pip install 'bastion[postgres]'"
        ) from None
    try:
        return PostgresAuditStore(
            database.url, database.password, migrate_schema=False, key_wrap=key_wrap
        )
    except AuditStoreUnavailable as exc:
        raise ExportError(str(exc)) from None


def _open(
    data_dir: Path, database: AuditDatabase | None = None
) -> tuple[AuditStore | PostgresAuditStore, Signer]:
    try:
        signer = Signer.load(data_dir)
    except SigningKeyError as exc:
        raise ExportError(str(exc)) from None
    return open_reader(data_dir, database), signer


def _header(signer: Signer) -> dict[str, Any]:
    return {
        "type": "log",
        "format": EXPORT_FORMAT,
        "log_id": signer.log_id,
        "public_key": signer.log_public_key.hex(),
        "public_key_pem": signer.public_key_pem(),
        "exported_at": datetime.now(UTC).isoformat(),
    }


def _key_chain(store: AuditStore | PostgresAuditStore) -> list[dict[str, Any]]:
    """The log's key transitions, for a proof to carry from the pinned key to its signer."""
    return [transition.as_dict() for transition in store.key_transitions()]


def export_log(
    data_dir: Path, out: TextIO, payloads: bool = True, database: AuditDatabase | None = None
) -> Exported:
    """Write the export of the log in `data_dir` (or `database`)."""
    store, signer = _open(data_dir, database)
    try:
        # Checkpoints first: every leaf they cover is then already in the table.
        transitions = store.key_transitions()
        checkpoints = store.checkpoints()
        out.write(json.dumps(_header(signer)) + "\n")
        hashes: list[bytes] = []
        for seq, kind, _, digest, canonical, stored in _leaves_with_payloads(store, payloads):
            payload, shredded = stored.data, stored.shredded
            entry = {
                "type": "leaf",
                "seq": seq,
                "kind": kind,
                "record": json.loads(canonical)["record"],
                "canonical": canonical.decode(),
                "leaf_hash": digest.hex(),
                "payload": base64.b64encode(payload).decode() if payload is not None else None,
            }
            if shredded:
                # Its key was destroyed (`bastion audit purge`); the leaf still binds its hash.
                entry["payload_shredded"] = True
            out.write(json.dumps(entry, ensure_ascii=False) + "\n")
            hashes.append(digest)
        # One tree for every checkpoint's proof: a proof per checkpoint over the whole log
        # would make an export grow with records x checkpoints.
        tree = merkle.MerkleTree(hashes)
        for transition in transitions:
            out.write(json.dumps({"type": "key_transition", **transition.as_dict()}) + "\n")
        previous: Checkpoint | None = None
        for checkpoint in checkpoints:
            entry = {"type": "checkpoint", **checkpoint.as_dict()}
            if previous is not None:
                proof = tree.consistency_proof(previous.size, checkpoint.size)
                entry["consistency_from"] = previous.size
                entry["consistency"] = [p.hex() for p in proof]
            out.write(json.dumps(entry) + "\n")
            previous = checkpoint
        signed = max((c.size for c in checkpoints), default=0)
        return Exported(len(hashes), len(checkpoints), signed)
    finally:
        store.close()


def _leaves_with_payloads(
    store: AuditStore | PostgresAuditStore, payloads: bool
) -> Iterator[tuple[int, str, str, bytes, bytes, StoredPayload]]:
    """Every leaf in order with its payload (with `payloads`), read a batch at a time: a log
    can be larger than memory, and a query per payload costs a round trip each."""
    seq = 0
    while True:
        batch = store.leaves_from(seq, EXPORT_BATCH)
        opened = payloads_of(store, batch) if payloads else {}
        for leaf in batch:
            yield (*leaf, opened.get((leaf[1], leaf[2]), NO_PAYLOAD))
        if len(batch) < EXPORT_BATCH:
            return
        seq = batch[-1][0] + 1


def payloads_of(
    store: AuditStore | PostgresAuditStore, leaves: Sequence[Sequence[Any]]
) -> dict[tuple[str, str], StoredPayload]:
    """The payloads of `leaves` ((seq, kind, record id, ...) rows), by (kind, record id)."""
    by_kind: dict[str, list[str]] = {}
    for leaf in leaves:
        by_kind.setdefault(str(leaf[1]), []).append(str(leaf[2]))
    return {
        (kind, record_id): stored
        for kind, record_ids in by_kind.items()
        for record_id, stored in store.stored_payloads(kind, record_ids).items()
    }


def _signed(store: AuditStore | PostgresAuditStore, size: int | None = None) -> Checkpoint:
    """The checkpoint of `size` (the latest by default); `ExportError` when there is none."""
    checkpoint = store.signed_checkpoint(size)
    if checkpoint is None:
        raise ExportError(
            "no signed checkpoint yet" if size is None else f"no signed checkpoint of size {size}"
        )
    return checkpoint


def prove_inclusion(
    store: AuditStore | PostgresAuditStore, signer: Signer, seq: int, size: int | None = None
) -> dict[str, Any]:
    """An inclusion proof of leaf `seq` in the signed tree of `size` (the latest by default)."""
    checkpoint = _signed(store, size)
    if not 0 <= seq < checkpoint.size:
        raise ExportError(
            f"record seq {seq} is not under the signed checkpoint of size {checkpoint.size}"
        )
    tree = tiled_tree(store, checkpoint.size)
    _, kind, record_id, digest, canonical = store.leaves_from(seq, 1)[0]
    return {
        "type": "inclusion",
        "log_id": signer.log_id,
        "public_key": signer.log_public_key.hex(),
        "key_transitions": _key_chain(store),
        "seq": seq,
        "size": checkpoint.size,
        "kind": kind,
        "record_id": record_id,
        "canonical": canonical.decode(),
        "leaf_hash": digest.hex(),
        "proof": [p.hex() for p in tree.inclusion_proof(seq)],
        "checkpoint": checkpoint.as_dict(),
    }


def prove_consistency(
    store: AuditStore | PostgresAuditStore,
    signer: Signer,
    size1: int,
    size2: int | None = None,
) -> dict[str, Any]:
    """A consistency proof between the signed trees of `size1` and `size2` (latest default)."""
    newer = _signed(store, size2)
    older = _signed(store, size1)
    if older.size > newer.size:
        raise ExportError(f"size {older.size} is after size {newer.size}")
    tree = tiled_tree(store, newer.size)
    return {
        "type": "consistency",
        "log_id": signer.log_id,
        "public_key": signer.log_public_key.hex(),
        "key_transitions": _key_chain(store),
        "size1": older.size,
        "size2": newer.size,
        "proof": [p.hex() for p in tree.consistency_proof(older.size)],
        "checkpoint1": older.as_dict(),
        "checkpoint2": newer.as_dict(),
    }


def tiled_tree(store: AuditStore | PostgresAuditStore, size: int) -> merkle.TiledTree:
    """The tree of the first `size` leaves for proofs: kept tile hashes, the missing ones
    computed from the leaves (and kept), and the leaves of a tile only where a proof needs them.
    A proof then reads about size / 256 hashes instead of every leaf hash."""
    wanted = size // merkle.TILE
    tiles = store.saved_tiles(wanted)
    while len(tiles) < wanted:
        first = len(tiles)
        last = min(wanted, first + TILES_AT_ONCE)
        leaves = store.leaf_hashes_between(first * merkle.TILE, last * merkle.TILE)
        if len(leaves) != (last - first) * merkle.TILE:
            raise ExportError(f"the log has fewer than the {size} leaves its checkpoint covers")
        made = [
            merkle.MerkleTree(leaves[i : i + merkle.TILE]).root()
            for i in range(0, len(leaves), merkle.TILE)
        ]
        store.save_tiles(first, made)
        tiles += made

    def tile_leaves(index: int) -> list[bytes]:
        start = index * merkle.TILE
        return store.leaf_hashes_between(start, min(size, start + merkle.TILE))

    return merkle.TiledTree(size, tiles, tile_leaves)


def inclusion_proof(
    data_dir: Path, seq: int, size: int | None = None, database: AuditDatabase | None = None
) -> dict[str, Any]:
    """`prove_inclusion` on the log in `data_dir` (or `database`)."""
    store, signer = _open(data_dir, database)
    try:
        return prove_inclusion(store, signer, seq, size)
    finally:
        store.close()


def consistency_proof(
    data_dir: Path, size1: int, size2: int | None = None, database: AuditDatabase | None = None
) -> dict[str, Any]:
    """`prove_consistency` on the log in `data_dir` (or `database`)."""
    store, signer = _open(data_dir, database)
    try:
        return prove_consistency(store, signer, size1, size2)
    finally:
        store.close()


class ProofRoutes:
    """`GET /v1/audit/{checkpoint,proof,consistency}`, behind `Authenticate` and `RequireAdmin`.

    `/v1/audit/proof?seq=N[&size=S]` and `/v1/audit/consistency?from=A[&to=B]` answer the same
    JSON documents as `bastion audit prove`; `/v1/audit/checkpoint` the latest signed one.
    """

    def __init__(self, store: AuditStore | PostgresAuditStore) -> None:
        # Who may call them is decided in front (`authorize.RequireAdmin`, from the roles file).
        self.store = store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "GET":
            await send_error(send, 405, "only GET", "invalid_request_error", "method_not_allowed")
            return
        signer = self.store.signer
        if signer is None:
            await send_error(send, 503, "no signing key", "audit_unavailable", "no_signer")
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))

        def number(name: str) -> int | None:
            values = query.get(name)
            return int(values[0]) if values else None

        path = scope["path"]
        try:
            doc: dict[str, Any]
            if path == "/v1/audit/checkpoint":
                doc = {
                    "type": "checkpoint",
                    "public_key": signer.log_public_key.hex(),
                    **_signed(self.store).as_dict(),
                    "key_transitions": _key_chain(self.store),
                }
            elif path == "/v1/audit/proof":
                seq = number("seq")
                if seq is None:
                    raise ValueError("give ?seq=N")
                # Proofs read every leaf hash: off the event loop.
                doc = await asyncio.to_thread(
                    prove_inclusion, self.store, signer, seq, number("size")
                )
            elif path == "/v1/audit/consistency":
                old = number("from")
                if old is None:
                    raise ValueError("give ?from=SIZE")
                doc = await asyncio.to_thread(
                    prove_consistency, self.store, signer, old, number("to")
                )
            else:
                await send_error(
                    send, 404, f"no route {path}", "invalid_request_error", "not_found"
                )
                return
        except (ExportError, ValueError) as exc:
            await send_error(send, 400, str(exc), "invalid_request_error", "bad_proof_request")
            return
        await send_json(send, 200, json.dumps(doc).encode())


def follow(
    store: AuditStore | PostgresAuditStore,
    start: int = 0,
    follow: bool = True,
    poll_s: float = 0.2,
) -> Iterator[dict[str, Any]]:
    """Leaves from seq `start` on as SIEM-ready dicts (no payloads); with `follow`, forever."""
    seq = start
    while True:
        rows = store.leaves_from(seq)
        for row_seq, kind, _, digest, canonical in rows:
            yield {
                "seq": row_seq,
                "kind": kind,
                "record": json.loads(canonical)["record"],
                "leaf_hash": digest.hex(),
            }
            seq = row_seq + 1
        if not follow:
            return
        if not rows:
            time.sleep(poll_s)


def public_key_pem(data_dir: Path) -> str:
    """The log's public key, PEM."""
    try:
        return Signer.load(data_dir).public_key_pem()
    except SigningKeyError as exc:
        raise ExportError(str(exc)) from None
