"""Sealing audit payloads so they can be crypto-shredded: one AES-256-GCM key per payload.

The key is stored beside the ciphertext (the store's `payload_keys` table), so sealing does not
hide a payload from whoever can read the store; it makes the payload destroyable in place.
Destroying the 32-byte key leaves a ciphertext nobody can open, without rewriting the (possibly
large) payload row, and without touching the Merkle leaf, which binds the plaintext by SHA-256.

Stored form: version byte ‖ 12-byte random nonce ‖ ciphertext ‖ 16-byte tag. The associated
data names the record (kind and id), so a ciphertext moved to another record does not open.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
_VERSION = b"\x01"
_AAD_DOMAIN = b"bastion-audit-payload/1"


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
