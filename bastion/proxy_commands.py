"""`bastion proxy`, `keys` and `roles`: argument parsing only; the work is in `audit_proxy`."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from audit_proxy.config import ConfigError, ProxyConfig, load_config
from audit_proxy.keys import KeyStore, KeyStoreError, Principal
from audit_proxy.roles import load_roles, roles_for
from audit_proxy.store import AuditStoreUnavailable


def add_proxy_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `proxy`, `keys` and `roles` on the `bastion` command's subparsers."""
    proxy = sub.add_parser("proxy", help="run the audit proxy (OpenAI-compatible HTTP service)")
    proxy.add_argument("--config", type=Path, metavar="FILE", help="TOML config file")
    proxy.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    proxy.add_argument("--port", type=int, help="port to listen on (default 8080)")
    proxy.add_argument("--upstream", metavar="URL", help="model server root URL")
    proxy.add_argument("--data-dir", type=Path, metavar="DIR", help="where the stores live")
    proxy.add_argument(
        "--roles", type=Path, metavar="FILE", help="roles TOML file (default DATA_DIR/roles.toml)"
    )
    proxy.add_argument(
        "--durability",
        choices=("process", "fsync"),
        help="what a committed audit record survives: a proxy crash (process, the default) "
        "or power loss (fsync)",
    )
    proxy.add_argument(
        "--busy-poll-us",
        type=int,
        metavar="N",
        help="when requests come close together, poll up to N microseconds between them "
        "instead of sleeping: lower latency on a VM for CPU while they do (default 500; 0: off)",
    )
    proxy.add_argument("--tls-certfile", type=Path, metavar="PEM", help="serve HTTPS: cert chain")
    proxy.add_argument("--tls-keyfile", type=Path, metavar="PEM", help="serve HTTPS: private key")
    proxy.add_argument(
        "--upstream-ca-file", type=Path, metavar="PEM", help="CA bundle for an https upstream"
    )
    proxy.add_argument(
        "--siem-jsonl", type=Path, metavar="FILE", help="ship audit leaves as JSONL ('-': stdout)"
    )
    proxy.add_argument(
        "--siem-syslog",
        metavar="URL",
        help="ship audit leaves to syslog: udp://, tcp://, tls:// (RFC 5425), relp:// or "
        "relp+tls://HOST:PORT",
    )
    proxy.add_argument(
        "--siem-syslog-ca-file", type=Path, metavar="PEM", help="CA bundle for a TLS collector"
    )
    proxy.add_argument(
        "--siem-syslog-certfile",
        type=Path,
        metavar="PEM",
        help="the proxy's certificate chain, for a TLS collector that asks for one",
    )
    proxy.add_argument(
        "--siem-syslog-keyfile", type=Path, metavar="PEM", help="the key of --siem-syslog-certfile"
    )
    proxy.set_defaults(func=run_proxy)

    keys = sub.add_parser("keys", help="issue, list and revoke user keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="issue a key and print it (shown only once)")
    create.add_argument("name")
    create.add_argument("--role", default="user")
    create.add_argument("--expires-days", type=float, metavar="N")
    create.set_defaults(func=create_key)
    listing = keys_sub.add_parser("list", help="list keys (never the keys themselves)")
    listing.set_defaults(func=list_keys)
    revoke = keys_sub.add_parser("revoke", help="revoke a key by name")
    revoke.add_argument("name")
    revoke.set_defaults(func=revoke_key)
    for parser in (create, listing, revoke):
        parser.add_argument("--config", type=Path, metavar="FILE", help="TOML config file")
        parser.add_argument("--data-dir", type=Path, metavar="DIR", help="where the stores live")

    roles = sub.add_parser("roles", help="check a roles file")
    roles_sub = roles.add_subparsers(dest="roles_command", required=True)
    check = roles_sub.add_parser(
        "check", help="validate a roles file and print who gets which role"
    )
    check.add_argument("file", type=Path)
    check.add_argument(
        "--data-dir", type=Path, metavar="DIR", help="also show the keys issued there"
    )
    check.set_defaults(func=check_roles)


def _config(args: argparse.Namespace, **overrides: Any) -> ProxyConfig:
    return load_config(args.config, {"data_dir": args.data_dir, **overrides})


def run_proxy(args: argparse.Namespace) -> int:
    """`bastion proxy`."""
    from audit_proxy.server import serve

    try:
        config = _config(
            args,
            host=args.host,
            port=args.port,
            upstream_url=args.upstream,
            roles_file=args.roles,
            durability=args.durability,
            busy_poll_us=args.busy_poll_us,
            tls_certfile=args.tls_certfile,
            tls_keyfile=args.tls_keyfile,
            upstream_ca_file=args.upstream_ca_file,
            siem_jsonl_path=args.siem_jsonl,
            siem_syslog_url=args.siem_syslog,
            siem_syslog_ca_file=args.siem_syslog_ca_file,
            siem_syslog_certfile=args.siem_syslog_certfile,
            siem_syslog_keyfile=args.siem_syslog_keyfile,
        )
        serve(config)
    except ConfigError as exc:
        print(f"bastion proxy: {exc}", file=sys.stderr)
        return 2
    except (AuditStoreUnavailable, KeyStoreError, OSError) as exc:
        print(f"bastion proxy: {exc}", file=sys.stderr)
        return 1
    return 0


def create_key(args: argparse.Namespace) -> int:
    """`bastion keys create NAME`: prints only the key, on one line."""
    expires_at = None
    if args.expires_days is not None:
        expires_at = datetime.now(UTC) + timedelta(days=args.expires_days)
    try:
        config = _config(args)
        roles = roles_for(config.roles_file, config.data_dir)
        effective = roles.role_of(Principal(name=args.name, role=args.role))
        if roles.get(effective) is None:
            raise ValueError(
                f"role {effective!r} is not defined in {roles.source}; use one of "
                f"{', '.join(sorted(roles.roles))} or add [roles.{effective}] there"
            )
        store = KeyStore(config.keys_db)
        key = store.create(args.name, role=args.role, expires_at=expires_at)
    except (ConfigError, KeyStoreError, ValueError, OSError) as exc:
        print(f"bastion keys create: {exc}", file=sys.stderr)
        return 1
    print(key)
    return 0


def list_keys(args: argparse.Namespace) -> int:
    """`bastion keys list`."""
    try:
        infos = KeyStore(_config(args).keys_db).list()
    except (ConfigError, OSError) as exc:
        print(f"bastion keys list: {exc}", file=sys.stderr)
        return 1
    print(f"{'NAME':<24} {'ROLE':<8} {'CREATED':<20} {'EXPIRES':<20} STATUS")
    for info in infos:
        if info.revoked_at is not None:
            status = "revoked"
        elif info.active():
            status = "active"
        else:
            status = "expired"
        expires = f"{info.expires_at:%Y-%m-%d %H:%M}" if info.expires_at else "never"
        print(
            f"{info.name:<24} {info.role:<8} {info.created_at:%Y-%m-%d %H:%M}{'':<4} "
            f"{expires:<20} {status}"
        )
    return 0


def revoke_key(args: argparse.Namespace) -> int:
    """`bastion keys revoke NAME`."""
    try:
        KeyStore(_config(args).keys_db).revoke(args.name)
    except (ConfigError, KeyStoreError, OSError) as exc:
        print(f"bastion keys revoke: {exc}", file=sys.stderr)
        return 1
    print(f"revoked {args.name}", file=sys.stderr)
    return 0


def check_roles(args: argparse.Namespace) -> int:
    """`bastion roles check FILE`: exit 1 with the errors, else print the effective mapping."""
    try:
        roles = load_roles(args.file)
        keys = None
        if args.data_dir is not None:
            keys = KeyStore(load_config(None, {"data_dir": args.data_dir}).keys_db).list()
        for line in roles.describe(keys):
            print(line)
        if keys is not None:
            roles.check_keys(keys)
    except (ConfigError, KeyStoreError, OSError) as exc:
        print(f"bastion roles check: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Just these commands, for running without the full `bastion` CLI (tests, benchmarks)."""
    parser = argparse.ArgumentParser(prog="bastion")
    add_proxy_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
