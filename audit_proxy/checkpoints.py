"""Signed checkpoints: the log's Ed25519 key, made at first start, and what it signs.

A checkpoint commits to {log id, size, root, time}. The log id is the SHA-256 of the log's
public key: the key made at first start, which auditors pin. `bastion audit rotate-key` hands
the signing to a new key with a `KeyTransition` that the outgoing key and the incoming one both
sign; the log keeps its id and its pinned key, and the verifier follows the chain of transitions
(see `audit_proxy.key_rotation`).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from audit_proxy.merkle import canonical_json
from audit_proxy.payload_crypto import KeyWrap

KEY_FILE = "audit-signing-key.pem"
PUBLIC_KEY_FILE = "audit-signing-key.pub"
# Written at the first rotation: the log's own public key (hex), which stays the pinned one.
LOG_KEY_FILE = "audit-log-key.pub"
# Retired keys' derived secrets (never their signing keys), for the payloads they wrapped.
RETIRED_KEYS_FILE = "audit-retired-keys.json"
# Must match `audit_proxy.verify.CHECKPOINT_DOMAIN`; the verifier keeps its own copy on purpose.
CHECKPOINT_DOMAIN = b"bastion-audit-checkpoint/1\n"
# Must match `audit_proxy.verify.TRANSITION_DOMAIN`.
TRANSITION_DOMAIN = b"bastion-audit-key-transition/1\n"
CHECKPOINT_EVERY_RECORDS = 1000
CHECKPOINT_EVERY_S = 10.0


class SigningKeyError(Exception):
    """The signing key cannot be read or made."""


@dataclass(frozen=True)
class Checkpoint:
    """A signed tree head; `key_id` names the signing key when it is not the log's own."""

    log_id: str
    size: int
    root: str
    time: str
    signature: str
    key_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "log_id": self.log_id,
            "size": self.size,
            "root": self.root,
            "time": self.time,
            "signature": self.signature,
        }
        if self.key_id is not None:
            doc["key_id"] = self.key_id
        return doc

    def as_row(self) -> tuple[int, str, str, str, str, str | None]:
        """The values of (size, log_id, root, time, signature, key_id), as stores keep them."""
        return (self.size, self.log_id, self.root, self.time, self.signature, self.key_id)


@dataclass(frozen=True)
class KeyTransition:
    """The log's signing passes from one key to the next at tree size `size` (with `root`).

    Both keys sign `transition_message`: the outgoing one authorizes the change, the incoming
    one proves it is held. Checkpoints past `size` signed by the outgoing key are refused.
    """

    log_id: str
    from_key_id: str
    to_public_key: str
    size: int
    root: str
    time: str
    from_signature: str
    to_signature: str

    @property
    def to_key_id(self) -> str:
        return hashlib.sha256(bytes.fromhex(self.to_public_key)).hexdigest()

    def as_dict(self) -> dict[str, Any]:
        return {
            "log_id": self.log_id,
            "from_key_id": self.from_key_id,
            "to_public_key": self.to_public_key,
            "size": self.size,
            "root": self.root,
            "time": self.time,
            "from_signature": self.from_signature,
            "to_signature": self.to_signature,
        }


def transition_message(
    log_id: str, from_key_id: str, to_public_key: str, size: int, root_hex: str, time: str
) -> bytes:
    """The bytes both keys of a transition sign: a domain line, then canonical JSON."""
    body = {
        "from_key_id": from_key_id,
        "log_id": log_id,
        "root": root_hex,
        "size": size,
        "time": time,
        "to_public_key": to_public_key,
    }
    return TRANSITION_DOMAIN + canonical_json(body)


@dataclass(frozen=True)
class RetiredKey:
    """What stays of a rotated-out signing key: the secrets derived from it, not the key."""

    key_id: str
    key_wrap: bytes
    evidence_key: bytes

    def __repr__(self) -> str:
        return f"RetiredKey({self.key_id[:16]})"


def checkpoint_message(log_id: str, size: int, root_hex: str, time: str) -> bytes:
    """The bytes a checkpoint signature covers: a domain line, then canonical JSON."""
    body = {"log_id": log_id, "root": root_hex, "size": size, "time": time}
    return CHECKPOINT_DOMAIN + canonical_json(body)


EVIDENCE_KEY_LABEL = b"bastion policy evidence digest/1"
KEY_WRAP_LABEL = b"bastion payload key wrap/1"


class Signer:
    """The log's current Ed25519 signing key, and the log's own (first) public key."""

    def __init__(
        self,
        key: Ed25519PrivateKey,
        log_public_key: bytes | None = None,
        retired: Sequence[RetiredKey] = (),
    ) -> None:
        self._key = key
        self.public_key = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.key_id = hashlib.sha256(self.public_key).hexdigest()
        self.log_public_key = log_public_key or self.public_key
        self.log_id = hashlib.sha256(self.log_public_key).hexdigest()
        self.retired = tuple(retired)

    @property
    def is_log_key(self) -> bool:
        """Whether this is the log's first key (no rotation since)."""
        return self.key_id == self.log_id

    @classmethod
    def generate(cls, log_public_key: bytes, retired: Sequence[RetiredKey] = ()) -> Signer:
        """A new key for the log of `log_public_key` (a rotation's incoming key)."""
        return cls(Ed25519PrivateKey.generate(), log_public_key, retired)

    @classmethod
    def load_or_create(cls, data_dir: Path) -> Signer:
        """Read `data_dir/audit-signing-key.pem`, making it (0600) on first start."""
        path = data_dir / KEY_FILE
        try:
            if path.exists():
                return cls(
                    read_private_key(path),
                    _read_log_key(data_dir / LOG_KEY_FILE),
                    read_retired_keys(data_dir),
                )
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            key = Ed25519PrivateKey.generate()
            # O_EXCL: two processes starting at once must not each write a different key.
            write_private_key(path, key)
        except FileExistsError:
            return cls.load_or_create(data_dir)
        except (OSError, ValueError) as exc:
            raise SigningKeyError(f"cannot use the audit signing key {path}: {exc}") from exc
        signer = cls(key)
        with contextlib.suppress(OSError):
            (data_dir / PUBLIC_KEY_FILE).write_text(signer.public_key_pem())
        return signer

    @classmethod
    def load(cls, data_dir: Path) -> Signer:
        """The key `data_dir` already holds; makes none. Raises `SigningKeyError`."""
        if not (data_dir / KEY_FILE).exists():
            raise SigningKeyError(f"no signing key in {data_dir} (has the proxy run there?)")
        return cls.load_or_create(data_dir)

    def evidence_key(self) -> bytes:
        """The key of the policy's evidence digests (audit_proxy.policy.engine)."""
        return self._derived_key(EVIDENCE_KEY_LABEL)

    def evidence_keys(self) -> list[tuple[str, bytes]]:
        """(key id, evidence key) of this key, then of each retired one, newest first: a record
        made before a rotation has its digests under the key of its time."""
        return [(self.key_id, self.evidence_key())] + [
            (r.key_id, r.evidence_key) for r in reversed(self.retired)
        ]

    def key_wrap(self) -> KeyWrap:
        """What wraps the payload keys a store keeps (audit_proxy.payload_crypto); keys that a
        retired signing key wrapped still unwrap."""
        return KeyWrap(
            self._derived_key(KEY_WRAP_LABEL), [r.key_wrap for r in reversed(self.retired)]
        )

    def retire(self) -> RetiredKey:
        """What must be kept of this key once it is rotated out."""
        return RetiredKey(
            self.key_id, self._derived_key(KEY_WRAP_LABEL), self._derived_key(EVIDENCE_KEY_LABEL)
        )

    def _derived_key(self, label: bytes) -> bytes:
        """A key for one purpose, derived from the signing key: replicas, which must share that
        key, get the same one without another secret to distribute."""
        seed = self._key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return hmac.digest(seed, label, "sha256")

    @classmethod
    def key_wrap_in(cls, data_dir: Path) -> KeyWrap | None:
        """The payload key wrap of the signing key in `data_dir`; None where there is none."""
        if not (data_dir / KEY_FILE).exists():
            return None
        return cls.load(data_dir).key_wrap()

    def public_key_pem(self) -> str:
        """The log's public key, PEM (SubjectPublicKeyInfo): the one auditors pin."""
        return (
            Ed25519PublicKey.from_public_bytes(self.log_public_key)
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    def sign(self, size: int, root: bytes, time: datetime | None = None) -> Checkpoint:
        """Sign the tree head of `size` leaves with `root`."""
        stamp = (time or datetime.now(UTC)).isoformat()
        message = checkpoint_message(self.log_id, size, root.hex(), stamp)
        return Checkpoint(
            self.log_id,
            size,
            root.hex(),
            stamp,
            self._key.sign(message).hex(),
            None if self.is_log_key else self.key_id,
        )

    def hand_over(self, successor: Signer, size: int, root: bytes) -> KeyTransition:
        """The transition from this key to `successor` at tree size `size`, signed by both."""
        if successor.log_id != self.log_id:
            raise ValueError("the successor key belongs to another log")
        stamp = datetime.now(UTC).isoformat()
        target = successor.public_key.hex()
        message = transition_message(self.log_id, self.key_id, target, size, root.hex(), stamp)
        return KeyTransition(
            self.log_id,
            self.key_id,
            target,
            size,
            root.hex(),
            stamp,
            self._key.sign(message).hex(),
            successor._key.sign(message).hex(),
        )

    def write_to(self, path: Path) -> None:
        """Save the private key as a new file (0600, O_EXCL, fsynced)."""
        write_private_key(path, self._key)


def read_private_key(path: Path) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM file. Raises ValueError / OSError."""
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path} is not an Ed25519 key")
    return key


def write_private_key(path: Path, key: Ed25519PrivateKey) -> None:
    """Write `key` as a new PEM file, 0600. Raises FileExistsError when `path` exists."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _create_private(path, pem)


def _create_private(path: Path, data: bytes) -> None:
    """Write `data` as a new file (O_EXCL), 0600, fsynced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def _read_log_key(path: Path) -> bytes | None:
    return read_public_key(path) if path.exists() else None


def read_retired_keys(data_dir: Path) -> list[RetiredKey]:
    """The retired keys' secrets kept in `data_dir`, oldest first (none: an empty list)."""
    path = data_dir / RETIRED_KEYS_FILE
    if not path.exists():
        return []
    try:
        doc = json.loads(path.read_text())
        return [
            RetiredKey(
                str(entry["key_id"]),
                bytes.fromhex(entry["key_wrap"]),
                bytes.fromhex(entry["evidence_key"]),
            )
            for entry in doc["retired"]
        ]
    except (ValueError, KeyError, TypeError) as exc:
        raise SigningKeyError(
            f"{path} is damaged ({exc}); restore it from the backup of the data dir: "
            "without it the payloads that retired keys wrapped do not open"
        ) from None


def write_retired_keys(data_dir: Path, retired: Sequence[RetiredKey]) -> None:
    """Replace the retired keys' file (0600) atomically."""
    doc = {
        "retired": [
            {"key_id": r.key_id, "key_wrap": r.key_wrap.hex(), "evidence_key": r.evidence_key.hex()}
            for r in retired
        ]
    }
    write_private_text(data_dir / RETIRED_KEYS_FILE, json.dumps(doc, indent=1) + "\n")


def write_private_text(path: Path, text: str) -> None:
    """Replace `path` with `text` atomically (a 0600 file, fsynced, renamed into place)."""
    partial = path.with_name(path.name + ".partial")
    with contextlib.suppress(FileNotFoundError):
        partial.unlink()
    _create_private(partial, text.encode())
    os.replace(partial, path)
    sync_dir(path.parent)


def sync_dir(path: Path) -> None:
    """fsync a directory, so that a rename in it survives power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_public_key(path: Path) -> bytes:
    """A public key file (PEM, or 64 hex digits) as 32 raw bytes."""
    text = path.read_text().strip()
    if "BEGIN" not in text:
        raw = bytes.fromhex(text)
        if len(raw) != 32:
            raise ValueError(f"{path}: not a 32-byte Ed25519 public key")
        return raw
    key = serialization.load_pem_public_key(text.encode())
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
