"""Signed checkpoints: the log's Ed25519 key, made at first start, and what it signs.

A checkpoint commits to {log id, size, root, time}. The log id is the SHA-256 of the raw public
key, so an export names the key that must have signed it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit_proxy.merkle import canonical_json
from audit_proxy.payload_crypto import KeyWrap

KEY_FILE = "audit-signing-key.pem"
PUBLIC_KEY_FILE = "audit-signing-key.pub"
# Must match `audit_proxy.verify.CHECKPOINT_DOMAIN`; the verifier keeps its own copy on purpose.
CHECKPOINT_DOMAIN = b"bastion-audit-checkpoint/1\n"
CHECKPOINT_EVERY_RECORDS = 1000
CHECKPOINT_EVERY_S = 10.0


class SigningKeyError(Exception):
    """The signing key cannot be read or made."""


@dataclass(frozen=True)
class Checkpoint:
    """A signed tree head."""

    log_id: str
    size: int
    root: str
    time: str
    signature: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "log_id": self.log_id,
            "size": self.size,
            "root": self.root,
            "time": self.time,
            "signature": self.signature,
        }


def checkpoint_message(log_id: str, size: int, root_hex: str, time: str) -> bytes:
    """The bytes a checkpoint signature covers: a domain line, then canonical JSON."""
    body = {"log_id": log_id, "root": root_hex, "size": size, "time": time}
    return CHECKPOINT_DOMAIN + canonical_json(body)


EVIDENCE_KEY_LABEL = b"bastion policy evidence digest/1"
KEY_WRAP_LABEL = b"bastion payload key wrap/1"


class Signer:
    """The log's Ed25519 signing key."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public_key = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.log_id = hashlib.sha256(self.public_key).hexdigest()

    @classmethod
    def load_or_create(cls, data_dir: Path) -> Signer:
        """Read `data_dir/audit-signing-key.pem`, making it (0600) on first start."""
        path = data_dir / KEY_FILE
        try:
            if path.exists():
                key = serialization.load_pem_private_key(path.read_bytes(), password=None)
                if not isinstance(key, Ed25519PrivateKey):
                    raise SigningKeyError(f"{path} is not an Ed25519 key")
                return cls(key)
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            key = Ed25519PrivateKey.generate()
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            # O_EXCL: two processes starting at once must not each write a different key.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(pem)
                out.flush()
                os.fsync(out.fileno())
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

    def key_wrap(self) -> KeyWrap:
        """What wraps the payload keys a store keeps (audit_proxy.payload_crypto)."""
        return KeyWrap(self._derived_key(KEY_WRAP_LABEL))

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
        """The public key, PEM (SubjectPublicKeyInfo), for auditors."""
        return (
            self._key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    def sign(self, size: int, root: bytes, time: datetime | None = None) -> Checkpoint:
        """Sign the tree head of `size` leaves with `root`."""
        stamp = (time or datetime.now(UTC)).isoformat()
        message = checkpoint_message(self.log_id, size, root.hex(), stamp)
        return Checkpoint(self.log_id, size, root.hex(), stamp, self._key.sign(message).hex())


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
