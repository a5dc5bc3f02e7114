"""Sealing audit payloads so they can be crypto-shredded: one AES-256-GCM key per payload.

The key is stored in the store's `payload_keys` table. Destroying it leaves a ciphertext nobody
can open, without rewriting the (possibly large) payload row, and without touching the Merkle
leaf, which binds the plaintext by SHA-256.

Stored keys are wrapped (`KeyWrap`: AES key wrap, RFC 3394) under a key-encryption key derived
from the proxy's signing key, which lives in the data dir and never in the store. So the store
alone (a copy of the SQLite file, a PostgreSQL backup, a DBA's SELECT) opens no payload, and a
key left behind in freed pages or a truncated WAL block is useless without the signing key.
A stored key of 32 bytes was written unwrapped (before wrapping, or by a store given no
`KeyWrap`) and is read as it is.

Stored form: version byte ‖ 12-byte random nonce ‖ ciphertext ‖ 16-byte tag. The associated
data names the record (kind and id), so a ciphertext moved to another record does not open.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
_VERSION = b"\x01"
_WRAPPED = b"\x01"
WRAPPED_KEY_BYTES = len(_WRAPPED) + KEY_BYTES + 8  # RFC 3394 adds one 8-byte block
_AAD_DOMAIN = b"bastion-audit-payload/1"

log = logging.getLogger("bastion.proxy")


class PayloadSealError(Exception):
    """A sealed payload does not open with its key: it, its key or its record was altered."""


@dataclass(frozen=True, slots=True)
class SealedPayload:
    """A payload's fresh key and the bytes to store in its place."""

    key: bytes
    stored: bytes

    def __repr__(self) -> str:
        # Never let a key reach a log line through a repr.
        return f"SealedPayload(stored={len(self.stored)} bytes)"


def _associated_data(kind: str, record_id: str) -> bytes:
    return b"\x00".join((_AAD_DOMAIN, kind.encode(), record_id.encode()))


def seal(kind: str, record_id: str, payload: bytes) -> SealedPayload:
    """Encrypt `payload` of record (`kind`, `record_id`) under a new random key."""
    key = AESGCM.generate_key(bit_length=KEY_BYTES * 8)
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = AESGCM(key).encrypt(nonce, payload, _associated_data(kind, record_id))
    return SealedPayload(key, _VERSION + nonce + ciphertext)


def unseal(kind: str, record_id: str, key: bytes, stored: bytes) -> bytes:
    """The plaintext of a payload `seal` made for record (`kind`, `record_id`)."""
    what = f"the payload of {kind} {record_id}"
    if len(key) != KEY_BYTES:
        raise PayloadSealError(f"{what}: its key is {len(key)} bytes, not {KEY_BYTES}")
    if len(stored) < 1 + NONCE_BYTES + TAG_BYTES or stored[:1] != _VERSION:
        raise PayloadSealError(f"{what} is not a sealed payload of format {_VERSION[0]}")
    nonce = stored[1 : 1 + NONCE_BYTES]
    try:
        return AESGCM(key).decrypt(
            nonce, stored[1 + NONCE_BYTES :], _associated_data(kind, record_id)
        )
    except InvalidTag:
        raise PayloadSealError(
            f"{what} does not open with its key: the payload, its key or its record was altered"
        ) from None


class KeyWrap:
    """Wraps payload keys for storage under a key-encryption key, and unwraps them.

    `retired` are the key-encryption keys of signing keys rotated out: a key one of them wrapped
    still unwraps (RFC 3394's integrity check tells which key-encryption key fits).
    """

    def __init__(self, kek: bytes, retired: Sequence[bytes] = ()) -> None:
        for candidate in (kek, *retired):
            if len(candidate) != KEY_BYTES:
                raise ValueError(f"a key-encryption key is {KEY_BYTES} bytes, not {len(candidate)}")
        self._kek = kek
        self._retired = tuple(retired)

    def __repr__(self) -> str:
        return "KeyWrap(<key-encryption key>)"

    def wrap(self, key: bytes) -> bytes:
        return _WRAPPED + aes_key_wrap(self._kek, key)

    def unwrap(self, stored: bytes) -> bytes:
        for kek in (self._kek, *self._retired):
            try:
                return aes_key_unwrap(kek, stored[len(_WRAPPED) :])
            except InvalidUnwrap:
                continue
        raise PayloadSealError(
            "a payload key does not unwrap: it was wrapped under another signing key "
            "(read the store with the data dir of the proxy that wrote it), or altered"
        )

    def wrapped_by_current(self, stored: bytes) -> bool:
        """Whether a stored key is wrapped under the current key-encryption key."""
        if len(stored) != WRAPPED_KEY_BYTES or stored[:1] != _WRAPPED:
            return False
        try:
            aes_key_unwrap(self._kek, stored[len(_WRAPPED) :])
        except InvalidUnwrap:
            return False
        return True


def stored_key(key: bytes, key_wrap: KeyWrap | None) -> bytes:
    """A payload's key as the store keeps it: wrapped when there is a `KeyWrap`."""
    return key_wrap.wrap(key) if key_wrap is not None else key


def payload_key(stored: bytes, key_wrap: KeyWrap | None) -> bytes:
    """The key a payload was sealed with, from its stored form (see the module doc)."""
    if len(stored) == WRAPPED_KEY_BYTES and stored[:1] == _WRAPPED:
        if key_wrap is None:
            raise PayloadSealError(
                "payload keys here are wrapped under the proxy's signing key: read the store "
                "with the data dir that holds it (--data-dir)"
            )
        return key_wrap.unwrap(stored)
    return stored


def rewrapped_or_kept(
    stored: bytes, old: KeyWrap | None, new: KeyWrap, where: object
) -> bytes | None:
    """A stored payload key wrapped under `new`'s current key-encryption key; None when it is
    already, or when it unwraps under no key known here (it is kept as it is, and logged:
    its payload did not open before either)."""
    if new.wrapped_by_current(stored):
        return None
    try:
        return new.wrap(payload_key(stored, old))
    except PayloadSealError as exc:
        log.warning("payload key %s left as it is: %s", where, exc)
        return None
