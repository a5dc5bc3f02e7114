"""Keys stored hashed in owner-only files; the `keys` commands; config errors that explain."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from audit_proxy.config import ConfigError, load_config
from audit_proxy.keys import ASK_SQLITE_S, KeyNameTaken, KeyStore, Principal, UnknownKey
from audit_proxy.store import AuditStore

from .conftest import REPO


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keys_are_stored_hashed_in_private_files(tmp_path: Path) -> None:
    data_dir = tmp_path / "home" / "bastion"
    keys = KeyStore(data_dir / "keys.sqlite3")
    key = keys.create("alice", role="admin")
    store = AuditStore(data_dir / "audit.sqlite3")
    asyncio.run(store.record_request(
        user="alice", role="admin", method="POST", route="/v1/completions", feature="chat",
        model=None, stream=False, body=b"{}",
    ))  # fmt: skip
    store.close()
    assert key.startswith("bst_") and len(key) > 40
    assert keys.verify(key) == Principal(name="alice", role="admin")
    files = sorted(data_dir.iterdir())
    assert {f.name for f in files} >= {"keys.sqlite3", "keys.sqlite3-wal", "audit.sqlite3"}
    assert mode(data_dir) == 0o700
    for path in files:
        assert mode(path) == 0o600, path
        assert key.encode() not in path.read_bytes()
        assert key[4:].encode() not in path.read_bytes()
    assert [info.name for info in keys.list()] == ["alice"]
    assert "bst_" not in repr(keys.list())


def test_key_lifecycle(tmp_path: Path) -> None:
    keys = KeyStore(tmp_path / "keys.sqlite3")
    key = keys.create("bob")
    with pytest.raises(KeyNameTaken):
        keys.create("bob")
    soon = keys.create("eve", expires_at=datetime.now(UTC) + timedelta(hours=1))
    assert keys.verify(soon) == Principal(name="eve", role="user")
    assert keys.verify(key + "x") is None
    assert keys.verify("not-even-a-key") is None
    keys.revoke("bob")
    assert keys.verify(key) is None
    with pytest.raises(UnknownKey):
        keys.revoke("nobody")
    with pytest.raises(ValueError, match="role"):
        keys.create("frank", role="Root!")


def test_remembered_keys_follow_the_key_file(tmp_path: Path) -> None:
    """A verified key is answered from memory until anyone changes the file, or it expires."""
    proxy_side = KeyStore(tmp_path / "keys.sqlite3")
    admin_side = KeyStore(tmp_path / "keys.sqlite3")  # as `bastion keys` opens it
    key = admin_side.create("bob")
    brief = admin_side.create("eve", expires_at=datetime.now(UTC) + timedelta(seconds=0.5))
    unknown_yet = "bst_" + "x" * 43
    assert proxy_side.verify(key) == Principal(name="bob", role="user")
    assert proxy_side.verify(brief) == Principal(name="eve", role="user")
    assert proxy_side.verify(unknown_yet) is None
    admin_side.revoke("bob")
    assert proxy_side.verify(key) is None
    time.sleep(0.6)
    assert proxy_side.verify(brief) is None
    fresh = admin_side.create("carol")
    assert proxy_side.verify(fresh) == Principal(name="carol", role="user")


def test_a_revocation_long_after_the_last_change_still_counts_at_once(tmp_path: Path) -> None:
    """Between changes the proxy asks SQLite nothing; the -wal file shows the next change."""
    proxy_side = KeyStore(tmp_path / "keys.sqlite3")
    admin_side = KeyStore(tmp_path / "keys.sqlite3")
    key = admin_side.create("bob")
    assert proxy_side.verify(key) == Principal(name="bob", role="user")
    time.sleep(ASK_SQLITE_S + 0.1)
    assert proxy_side.verify(key) == Principal(name="bob", role="user")  # from memory
    admin_side.revoke("bob")
    assert proxy_side.verify(key) is None
    # The same after SQLite has moved the -wal's pages into the file and starts it over.
    other = admin_side.create("carol")
    with contextlib.closing(sqlite3.connect(tmp_path / "keys.sqlite3")) as raw:
        raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert proxy_side.verify(other) == Principal(name="carol", role="user")
    time.sleep(ASK_SQLITE_S + 0.1)
    admin_side.revoke("carol")
    assert proxy_side.verify(other) is None


def bastion(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bastion.proxy_commands", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )


def test_keys_commands(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    created = bastion("keys", "create", "alice", "--expires-days", "30", "--data-dir", data)
    assert created.returncode == 0, created.stderr
    assert created.stdout.count("\n") == 1
    key = created.stdout.strip()
    assert KeyStore(tmp_path / "data" / "keys.sqlite3").verify(key) == Principal(
        name="alice", role="user"
    )
    again = bastion("keys", "create", "alice", "--data-dir", data)
    assert again.returncode == 1 and "exists already" in again.stderr and again.stdout == ""
    assert bastion("keys", "revoke", "alice", "--data-dir", data).returncode == 0
    listing = bastion("keys", "list", "--data-dir", data)
    assert "alice" in listing.stdout and "revoked" in listing.stdout and key not in listing.stdout


def test_proxy_refuses_to_start_without_a_writable_store(tmp_path: Path) -> None:
    # As an unprivileged user, a root-owned data dir is really not writable.
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    tmp_path.chmod(0o755)
    result = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         sys.executable, "-m", "bastion.proxy_commands", "proxy", "--data-dir", str(data_dir),
         "--port", "0"],
        capture_output=True, text=True, cwd=REPO, timeout=60, check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "cannot open" in result.stderr and str(data_dir) in result.stderr


def test_config_file_then_env_then_flags(tmp_path: Path) -> None:
    key_file = tmp_path / "upstream.key"
    key_file.write_text("from-file\n")
    config_file = tmp_path / "proxy.toml"
    config_file.write_text(
        f'port = 9000\nupstream_url = "http://vllm:8000/v1/"\n'
        f'upstream_api_key_file = "{key_file}"\ndata_dir = "{tmp_path}"\n'
    )
    config = load_config(config_file, {"port": 9100, "host": None}, environ={})
    assert (config.port, config.host, config.upstream_url) == (
        9100,
        "127.0.0.1",
        "http://vllm:8000",
    )
    assert config.upstream_api_key is not None
    assert config.upstream_api_key.get_secret_value() == "from-file"
    assert "from-file" not in repr(config)
    env = {"BASTION_UPSTREAM_API_KEY": "from-env"}
    config = load_config(config_file, environ=env)
    assert config.upstream_api_key is not None
    assert config.upstream_api_key.get_secret_value() == "from-env"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('port = "eighty"\n', "port"),
        ("prot = 8080\n", "unknown key 'prot'"),
        ('upstream_url = "vllm:8000"\n', "upstream_url"),
        ("port = \n", "not valid TOML"),
        ('upstream_api_key_file = "/nonexistent/key"\n', "upstream_api_key_file"),
        ("busy_poll_us = 50000\n", "busy_poll_us"),
    ],
)
def test_bad_config_names_the_file_and_the_key(tmp_path: Path, text: str, expected: str) -> None:
    config_file = tmp_path / "proxy.toml"
    config_file.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(config_file, environ={})
    assert str(config_file) in str(info.value)
    assert expected in str(info.value)


def test_bad_config_file_exits_with_the_explanation(tmp_path: Path) -> None:
    config_file = tmp_path / "proxy.toml"
    config_file.write_text("read_timeout_s = -1\n")
    result = bastion("proxy", "--config", str(config_file))
    assert result.returncode == 2
    assert str(config_file) in result.stderr and "read_timeout_s" in result.stderr
