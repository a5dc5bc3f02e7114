"""Rotating the audit log's signing key (`bastion audit rotate-key`).

The log keeps its id and the public key auditors pinned; the signing passes to a new key by a
`KeyTransition` that the outgoing and the incoming key both sign, at a tree size the outgoing
key also checkpoints. The verifier follows the chain from the pinned key, and refuses a
checkpoint that a key signed past the size at which it was rotated out, so a stolen old key
cannot extend the log.

The secrets derived from a signing key go with it: payload keys are wrapped anew under the
incoming key, and policy evidence digests of new records use its evidence key. What is kept of
the outgoing key is only those derived secrets (`audit-retired-keys.json`), so that payload
keys a replica still on the old key writes open, and so that `bastion audit evidence-digest`
finds old digests; the outgoing private key itself is deleted.

Each step can be repeated after a crash; running the command again finishes a rotation that
stopped half-way (the incoming key waits in `audit-signing-key.next.pem` until it is current).

A running proxy rotates its own key on `POST /v1/audit/rotate-key` (`RotateKeyRoute`, admin
only), with no restart: a SQLite store, which admits one writer and so cannot be rotated by the
command while the proxy runs, switches to the incoming key in the transaction that records the
hand-over; a PostgreSQL replica takes it up from its data dir at its next checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from audit_proxy.asgi import Receive, Scope, Send, send_error, send_json
from audit_proxy.auth import PRINCIPAL
from audit_proxy.checkpoints import (
    KEY_FILE,
    LOG_KEY_FILE,
    KeyTransition,
    RetiredKey,
    Signer,
    SigningKeyError,
    read_private_key,
    sync_dir,
    write_private_text,
    write_retired_keys,
)
from audit_proxy.export import AUDIT_DB
from audit_proxy.store import AuditStore, AuditStoreUnavailable

if TYPE_CHECKING:
    from audit_proxy.pg_store import PostgresAuditStore

log = logging.getLogger("bastion.proxy")

NEXT_KEY_FILE = "audit-signing-key.next.pem"


class RotationError(Exception):
    """The rotation cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class Rotation:
    """What a rotation did."""

    transition: KeyTransition
    rewrapped: int


def rotate_signing_key(
    data_dir: Path,
    store_url: str | None = None,
    password: str | None = None,
    live: AuditStore | PostgresAuditStore | None = None,
) -> Rotation:
    """Rotate the signing key in `data_dir`, for its SQLite log or the PostgreSQL one at
    `store_url`, or for the `live` store of the proxy running on `data_dir`. Raises
    `RotationError`."""
    try:
        outgoing = Signer.load(data_dir)
    except SigningKeyError as exc:
        raise RotationError(str(exc)) from None
    # The log first: a log that cannot be rotated here (another process writes it) leaves no
    # key waiting in the data dir.
    store = live or _open_writer(data_dir, outgoing, store_url, password)
    again = "post to /v1/audit/rotate-key again" if live is not None else "run the command again"
    try:
        incoming = _prepare_keys(data_dir, outgoing)
        try:
            transition = store.rotate_signing_key(outgoing, incoming)
            _make_current(data_dir)
        except (AuditStoreUnavailable, OSError) as exc:
            raise RotationError(f"{exc}; {again} to finish the rotation") from None
        try:
            rewrapped = store.rewrap_payload_keys(outgoing.key_wrap(), incoming.key_wrap())
        except AuditStoreUnavailable as exc:
            raise RotationError(
                f"the new key is current, but the payload keys could not all be wrapped anew "
                f"({exc}); they still open (the old key's wrap is kept in "
                "audit-retired-keys.json), and the next rotation wraps them"
            ) from None
    finally:
        if live is None:
            store.close()
    return Rotation(transition, rewrapped)


def _prepare_keys(data_dir: Path, outgoing: Signer) -> Signer:
    """Write what the data dir keeps of the outgoing key, and the incoming key (pending)."""
    retired = _retired_with(outgoing)
    try:
        if not (data_dir / LOG_KEY_FILE).exists():
            write_private_text(data_dir / LOG_KEY_FILE, outgoing.log_public_key.hex() + "\n")
        write_retired_keys(data_dir, retired)
        return _incoming_key(data_dir, outgoing, retired)
    except (OSError, ValueError, SigningKeyError) as exc:
        raise RotationError(f"cannot write the new key in {data_dir}: {exc}") from None


def _retired_with(outgoing: Signer) -> list[RetiredKey]:
    """The retired keys once `outgoing` joins them (once)."""
    retired = list(outgoing.retired)
    if all(r.key_id != outgoing.key_id for r in retired):
        retired.append(outgoing.retire())
    return retired


def _incoming_key(data_dir: Path, outgoing: Signer, retired: list[RetiredKey]) -> Signer:
    """The key waiting in NEXT_KEY_FILE (a rotation that stopped half-way), else a new one."""
    path = data_dir / NEXT_KEY_FILE
    if path.exists():
        return Signer(read_private_key(path), outgoing.log_public_key, retired)
    incoming = Signer.generate(outgoing.log_public_key, retired)
    incoming.write_to(path)
    sync_dir(data_dir)
    return incoming


def _open_writer(
    data_dir: Path, outgoing: Signer, store_url: str | None, password: str | None
) -> AuditStore | PostgresAuditStore:
    if store_url is not None:
        from audit_proxy.pg_store import PostgresAuditStore

        try:
            return PostgresAuditStore(store_url, password, key_wrap=outgoing.key_wrap())
        except AuditStoreUnavailable as exc:
            raise RotationError(str(exc)) from None
    path = data_dir / AUDIT_DB
    try:
        store = AuditStore(path, key_wrap=outgoing.key_wrap())
    except AuditStoreUnavailable as exc:
        raise RotationError(str(exc)) from None
    try:
        store.claim_writer()
    except AuditStoreUnavailable as exc:
        store.close()
        raise RotationError(
            f"{exc}; rotate through that proxy instead (POST /v1/audit/rotate-key with an "
            "admin key: no restart), or stop it, rotate, then start it again"
        ) from None
    return store


def _make_current(data_dir: Path) -> None:
    """The incoming key replaces the outgoing one, whose private key is then gone."""
    path = data_dir / NEXT_KEY_FILE
    if path.exists():
        os.replace(path, data_dir / KEY_FILE)
        sync_dir(data_dir)
    with contextlib.suppress(OSError):
        # The public key file keeps naming the log's own key, which auditors pin.
        os.chmod(data_dir / KEY_FILE, 0o600)


class RotateKeyRoute:
    """`POST /v1/audit/rotate-key`, behind `Authenticate` and `RequireAdmin`: the running proxy
    hands its log's signing to a new key and answers the transition. One rotation at a time."""

    def __init__(self, store: AuditStore | PostgresAuditStore, data_dir: Path) -> None:
        self.store = store
        self.data_dir = data_dir
        self._running = asyncio.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            await send_error(send, 405, "only POST", "invalid_request_error", "method_not_allowed")
            return
        if self._running.locked():
            await send_error(
                send, 409, "a key rotation is running; try again when it has ended",
                "invalid_request_error", "rotation_running",
            )  # fmt: skip
            return
        async with self._running:
            try:
                # Rewrapping every payload key reads and writes the whole key table.
                done = await asyncio.to_thread(rotate_signing_key, self.data_dir, live=self.store)
            except RotationError as exc:
                await send_error(send, 503, str(exc), "audit_unavailable", "rotation_failed")
                return
        transition = done.transition
        log.warning(
            "signing key %s rotated out at size %d by %s; key %s signs from now on "
            "(%d payload keys wrapped anew)",
            transition.from_key_id[:16], transition.size, scope[PRINCIPAL].name,
            transition.to_key_id[:16], done.rewrapped,
        )  # fmt: skip
        answer = {**transition.as_dict(), "to_key_id": transition.to_key_id,
                  "rewrapped": done.rewrapped}  # fmt: skip
        await send_json(send, 200, json.dumps(answer).encode())
