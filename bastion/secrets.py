"""Secret files Bastion writes: created 0600 in a 0700 directory, never logged."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) and make it 0700."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def write_secret(path: Path, value: str) -> None:
    """Write `value` to a new file readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")
    path.chmod(0o600)


def read_secret(path: Path) -> str:
    return path.read_text(encoding="utf-8").strip()


def read_or_create_secret(path: Path, prefix: str = "") -> str:
    """The secret stored at `path`, made (random, 256 bits) on first use."""
    if path.exists():
        return read_secret(path)
    value = prefix + secrets.token_urlsafe(32)
    write_secret(path, value)
    return value
