"""User API keys: issued once in plaintext, stored only as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel

from audit_proxy.file_stamp import FileStamp, file_stamp
from audit_proxy.sqlite import open_private_db

KEY_PREFIX = "bst_"
# Role names: what `--role`, the roles file and the audit records accept.
ROLE_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
# Keys remembered between changes to the key file; a flood of bad keys only empties it.
_MAX_KNOWN = 10_000
# After the key file's -wal changes, SQLite is asked whether it did for this long.
ASK_SQLITE_S = 1.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    name TEXT PRIMARY KEY,
    key_sha256 TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT,
    revoked_at TEXT
)
"""


class KeyStoreError(Exception):
    """Base of the key store's errors."""


class KeyNameTaken(KeyStoreError):
    """A key with this name exists already (revoked keys keep their name)."""


class UnknownKey(KeyStoreError):
    """No key has this name."""


class Principal(BaseModel):
    """Who a valid key belongs to."""

    name: str
    role: str


class KeyInfo(BaseModel):
    """A key as `list()` shows it: everything but the key."""

    name: str
    role: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    def active(self, now: datetime | None = None) -> bool:
        now = now or datetime.now(UTC)
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


def hash_key(key: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    """The user keys in `keys.sqlite3`; safe to share between threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._conn = open_private_db(path)
            self._conn.execute(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise KeyStoreError(f"cannot open the key store {path}: {exc}") from exc
        self._lock = threading.Lock()
        # Verified keys by hash: (owner, expiry as a Unix time) or None for a refused key.
        self._known: dict[str, tuple[Principal, float | None] | None] = {}
        self._known_version: int | None = None
        self._wal_path = Path(f"{path}-wal")
        self._wal_stamp: FileStamp | None = None
        self._ask_sqlite_until = 0.0

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def create(self, name: str, role: str = "user", expires_at: datetime | None = None) -> str:
        """Issue a key and return it; this is the only time its plaintext exists."""
        if not name or not name.isprintable() or name != name.strip():
            raise ValueError(f"invalid key name {name!r}: use printable text without edge spaces")
        if not ROLE_NAME.fullmatch(role):
            raise ValueError(f"invalid role {role!r}: use lower-case letters, digits, '-' or '_'")
        if expires_at is not None and expires_at.tzinfo is None:
            raise ValueError("expires_at must carry a time zone")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        try:
            with self._lock:
                self._known.clear()
                self._conn.execute(
                    "INSERT INTO keys (name, key_sha256, role, created_at, expires_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (name, hash_key(key), role, now.isoformat(), _iso(expires_at)),
                )
        except sqlite3.IntegrityError:
            raise KeyNameTaken(
                f"a key named {name!r} exists already; pick another name "
                "(revoked keys keep theirs, so the audit trail stays unambiguous)"
            ) from None
        return key

    def verify(self, key: str) -> Principal | None:
        """The key's owner, or None if the key is unknown, revoked or expired.

        Answers come from memory while the key file is unchanged: SQLite's `data_version`
        moves whenever another connection (`bastion keys revoke`, say) commits, and this
        store's own writes clear the memory, so a revocation counts from the next request.
        """
        if not key.startswith(KEY_PREFIX):
            return None
        digest = hash_key(key)
        with self._lock:
            if self._may_have_changed():
                (version,) = self._conn.execute("PRAGMA data_version").fetchone()
                if version != self._known_version:
                    self._known.clear()
                    self._known_version = version
            if digest in self._known:
                known = self._known[digest]
            else:
                known = self._look_up(digest)
                if len(self._known) >= _MAX_KNOWN:
                    self._known.clear()
                self._known[digest] = known
        if known is None:
            return None
        principal, expires_at = known
        if expires_at is not None and expires_at <= time.time():
            return None
        return principal

    def _may_have_changed(self) -> bool:
        """Whether SQLite must be asked for `data_version` (a statement, some 30 us on the
        proxy's path): only while the -wal file, where every commit is written, shows a change,
        and for ASK_SQLITE_S after. A stat costs a tenth; the time after covers a commit that
        becomes visible a moment after its write, and one in the same clock tick as the last."""
        stamp = file_stamp(self._wal_path)
        now = time.monotonic()
        if stamp is None or stamp != self._wal_stamp:
            self._wal_stamp = stamp
            self._ask_sqlite_until = now + ASK_SQLITE_S
            return True
        return now < self._ask_sqlite_until

    def _look_up(self, digest: str) -> tuple[Principal, float | None] | None:
        row = self._conn.execute(
            "SELECT name, role, key_sha256, expires_at, revoked_at FROM keys WHERE key_sha256 = ?",
            (digest,),
        ).fetchone()
        if row is None:
            return None
        name, role, stored, expires_at, revoked_at = row
        # The lookup is by hash of a high-entropy secret; compare once more without early exit.
        if not hmac.compare_digest(stored, digest) or revoked_at is not None:
            return None
        expiry = datetime.fromisoformat(expires_at).timestamp() if expires_at else None
        return Principal(name=name, role=role), expiry

    def list(self) -> list[KeyInfo]:
        """Every key ever issued, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT name, role, created_at, expires_at, revoked_at FROM keys"
                " ORDER BY created_at, name"
            ).fetchall()
        return [
            KeyInfo(name=n, role=r, created_at=c, expires_at=e, revoked_at=v)
            for n, r, c, e, v in rows
        ]

    def revoke(self, name: str) -> None:
        """Revoke a key by name; the row stays for the audit trail."""
        with self._lock:
            self._known.clear()
            cursor = self._conn.execute(
                "UPDATE keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                (datetime.now(UTC).isoformat(), name),
            )
            if cursor.rowcount == 0:
                exists = self._conn.execute("SELECT 1 FROM keys WHERE name = ?", (name,)).fetchone()
                if exists is None:
                    raise UnknownKey(f"no key named {name!r}; 'bastion keys list' shows them")


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None
