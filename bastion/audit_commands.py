"""`bastion audit ...`: argument parsing only; the work is in `audit_proxy.export` and `.verify`."""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audit_proxy.config import ConfigError, ProxyConfig, load_config

if TYPE_CHECKING:
    from audit_proxy.export import AuditDatabase
    from audit_proxy.pg_store import PostgresAuditStore
    from audit_proxy.store import AuditStore

PROG = "bastion audit"


def add_audit_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `audit export|verify|prove|verify-proof|tail|public-key|evidence-digest|purge|
    rotate-key`."""
    audit = sub.add_parser("audit", help="export the audit log; verify it and its proofs offline")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")

    export = audit_sub.add_parser("export", help="write the log, checkpoints and key as JSONL")
    export.add_argument("out", type=Path, metavar="OUT.jsonl", help="file to write ('-': stdout)")
    export.add_argument(
        "--no-payloads", action="store_true", help="leave request and response bodies out"
    )
    export.set_defaults(func=export_command)

    verify = audit_sub.add_parser("verify", help="check an export offline, with nothing else")
    verify.add_argument("export", type=Path, metavar="EXPORT.jsonl")
    verify.add_argument(
        "--siem",
        action="store_true",
        help="the file is a SIEM's copy (the lines the JSONL sink shipped, in any order, some "
        "twice); needs --public-key",
    )
    verify.add_argument(
        "--public-key", type=Path, metavar="FILE", help="the key the log must be signed by"
    )
    verify.add_argument(
        "--strict",
        action="store_true",
        help="fail if any record is not yet under a signed checkpoint",
    )
    verify.set_defaults(func=verify_command)

    prove = audit_sub.add_parser(
        "prove", help="print an inclusion proof of record SEQ, or a consistency proof (JSON)"
    )
    prove.add_argument("seq", type=int, nargs="?", metavar="SEQ")
    prove.add_argument("--size", type=int, help="prove against the checkpoint of this size")
    prove.add_argument(
        "--consistency",
        type=int,
        nargs=2,
        metavar=("OLD", "NEW"),
        help="prove the checkpoint of size NEW extends the one of size OLD",
    )
    prove.set_defaults(func=prove_command)

    verify_proof = audit_sub.add_parser("verify-proof", help="check a proof from `prove`")
    verify_proof.add_argument("proof", type=Path, metavar="PROOF.json", help="('-': stdin)")
    verify_proof.add_argument("--public-key", type=Path, metavar="FILE")
    verify_proof.set_defaults(func=verify_proof_command)

    tail = audit_sub.add_parser("tail", help="print records as JSONL (no payloads); -f follows")
    tail.add_argument("-n", type=int, default=10, metavar="N", help="start N records from the end")
    tail.add_argument("--from-seq", type=int, metavar="SEQ", help="start at this record instead")
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new records")
    tail.set_defaults(func=tail_command)

    public_key = audit_sub.add_parser("public-key", help="print the log's public key (PEM)")
    public_key.set_defaults(func=public_key_command)

    evidence = audit_sub.add_parser(
        "evidence-digest",
        help="print the digest policy findings keep of a value read from stdin, to look for it",
    )
    evidence.set_defaults(func=evidence_digest_command)

    purge = audit_sub.add_parser(
        "purge",
        help="crypto-shred the payloads of records received before DATE (leaves stay provable)",
    )
    purge.add_argument(
        "--before",
        required=True,
        type=purge_cutoff,
        metavar="DATE",
        help="YYYY-MM-DD (midnight UTC) or an ISO 8601 time (UTC unless it names a zone)",
    )
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    purge.set_defaults(func=purge_command)

    rotate = audit_sub.add_parser(
        "rotate-key",
        help="hand the log's signing to a new key (the log keeps its id and pinned public key)",
    )
    rotate.set_defaults(func=rotate_key_command)

    resend = audit_sub.add_parser(
        "siem-resend",
        help="ship the log to the SIEM again from record SEQ (after a collector lost records)",
    )
    resend.add_argument(
        "--from", dest="from_seq", required=True, type=_seq, metavar="SEQ",
        help="the first record to ship again (`verify --siem` names the first one missing)",
    )  # fmt: skip
    resend.add_argument(
        "--sink", choices=("all", "jsonl", "syslog"), default="all", help="which sink (all)"
    )
    resend.set_defaults(func=siem_resend_command)

    for parser in (export, prove, tail, public_key, evidence, purge, rotate, resend):
        parser.add_argument("--config", type=Path, metavar="FILE", help="TOML config file")
        parser.add_argument("--data-dir", type=Path, metavar="DIR", help="where the stores live")
    for parser in (export, prove, tail, purge, rotate, resend):
        parser.add_argument(
            "--store-url",
            metavar="URL",
            help="read the PostgreSQL audit store at postgresql://USER@HOST:PORT/DB "
            "(password: $BASTION_STORE_PASSWORD or store_password_file in --config)",
        )


def _seq(text: str) -> int:
    """A record's seq on the command line: a whole number, 0 or more."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a record seq (0, 1, 2, ...)")
    return int(text)


def _data_dir(args: argparse.Namespace) -> Path:
    return load_config(args.config, {"data_dir": args.data_dir}).data_dir


def _location(args: argparse.Namespace) -> tuple[Path, AuditDatabase | None]:
    """The data dir (signing key) and, when configured, the PostgreSQL audit store."""
    return _location_of(_config(args))


def _config(args: argparse.Namespace) -> ProxyConfig:
    return load_config(args.config, {"data_dir": args.data_dir, "store_url": args.store_url})


def _location_of(config: ProxyConfig) -> tuple[Path, AuditDatabase | None]:
    from audit_proxy.export import AuditDatabase

    if config.store_url is None:
        return config.data_dir, None
    password = config.store_password.get_secret_value() if config.store_password else None
    return config.data_dir, AuditDatabase(config.store_url, password)


def _siem_sinks(config: ProxyConfig, sink: str) -> tuple[tuple[str, ...], bool]:
    """The sinks `--sink` names (for "all", those the config ships to, or both when it names
    none: the proxy may take them from its flags), and whether the config names any."""
    from audit_proxy.siem import SINK_NAMES

    settings = (config.siem_jsonl_path, config.siem_syslog_url)
    configured = tuple(n for n, s in zip(SINK_NAMES, settings, strict=True) if s is not None)
    if sink != "all":
        return (sink,), bool(configured)
    return configured or SINK_NAMES, bool(configured)


def _pinned_key(path: Path | None) -> bytes | None:
    from audit_proxy.checkpoints import read_public_key

    return read_public_key(path) if path is not None else None


def export_command(args: argparse.Namespace) -> int:
    """`bastion audit export OUT.jsonl`."""
    from audit_proxy.export import ExportError, export_log
    from audit_proxy.store import AuditStoreUnavailable

    try:
        data_dir, database = _location(args)
        payloads = not args.no_payloads
        if str(args.out) == "-":
            exported = export_log(data_dir, sys.stdout, payloads, database)
        else:
            # Payloads are prompts and answers: the file is for its owner only.
            fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                exported = export_log(data_dir, out, payloads, database)
    except (ConfigError, ExportError, AuditStoreUnavailable, OSError) as exc:
        print(f"{PROG} export: {exc}", file=sys.stderr)
        return 1
    print(
        f"exported {exported.records} records and {exported.checkpoints} checkpoints",
        file=sys.stderr,
    )
    note = exported.unsigned_tail_note()
    if note is not None:
        print(f"note: {note}", file=sys.stderr)
    return 0


def verify_command(args: argparse.Namespace) -> int:
    """`bastion audit verify EXPORT`: exit 0 if it verifies, 1 naming the first bad record."""
    from audit_proxy.verify import verify_export_file
    from audit_proxy.verify_siem import verify_siem_copy_file

    try:
        pinned = _pinned_key(args.public_key)
        if not args.siem:
            report = verify_export_file(args.export, pinned)
        elif pinned is None:
            print(
                f"{PROG} verify --siem: give --public-key FILE (`bastion audit public-key` "
                "prints it): a SIEM's copy carries no key of its own to trust",
                file=sys.stderr,
            )
            return 2
        else:
            report = verify_siem_copy_file(args.export, pinned)
    except (OSError, ValueError) as exc:
        print(f"{PROG} verify: {exc}", file=sys.stderr)
        return 2
    first = report.first_problem()
    if first is None and args.strict and report.unsigned_from is not None:
        print(f"FAILED: record seq {report.unsigned_from}: not under a signed checkpoint")
        return 1
    if first is not None:
        print(f"FAILED: {first}")
        for problem in report.problems:
            if problem is not first:
                print(f"  also: {problem}")
        if args.siem and first.seq is not None and first.message.startswith("missing"):
            print(
                f"if the SIEM lost records, `{PROG} siem-resend --from {first.seq}` on the "
                "proxy's side ships the log to it again from there"
            )
        return 1
    payloads = f"{report.payloads_checked} payloads checked"
    if report.payloads_shredded:
        payloads += f", {report.payloads_shredded} shredded by a purge"
    if args.siem:
        payloads = "no payloads (a SIEM gets none: each record binds its own by SHA-256)"
    elif report.payloads_absent:
        payloads += f", {report.payloads_absent} not in the export"
    print(
        f"OK: {report.records} records, {report.checkpoints} checkpoints "
        f"(signed through size {report.signed_size}), {payloads}"
    )
    print(f"log {report.log_id} (public key {report.public_key})")
    if report.key_transitions:
        print(f"signing key rotated {report.key_transitions} time(s); every hand-over verified")
    for note in report.notes:
        print(f"note: {note}")
    return 0


def prove_command(args: argparse.Namespace) -> int:
    """`bastion audit prove SEQ` or `bastion audit prove --consistency OLD NEW`."""
    from audit_proxy.export import ExportError, consistency_proof, inclusion_proof
    from audit_proxy.store import AuditStoreUnavailable

    proof: dict[str, Any]
    try:
        data_dir, database = _location(args)
        if args.consistency is not None:
            old, new = args.consistency
            proof = consistency_proof(data_dir, old, new, database)
        elif args.seq is not None:
            proof = inclusion_proof(data_dir, args.seq, args.size, database)
        else:
            print(f"{PROG} prove: give SEQ or --consistency OLD NEW", file=sys.stderr)
            return 2
    except (ConfigError, ExportError, AuditStoreUnavailable, OSError) as exc:
        print(f"{PROG} prove: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(proof, indent=2))
    return 0


def verify_proof_command(args: argparse.Namespace) -> int:
    """`bastion audit verify-proof PROOF.json`."""
    from audit_proxy.verify import verify_proof

    try:
        text = sys.stdin.read() if str(args.proof) == "-" else args.proof.read_text()
        doc = json.loads(text)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        problem = verify_proof(doc, _pinned_key(args.public_key))
    except (OSError, ValueError) as exc:
        print(f"{PROG} verify-proof: {exc}", file=sys.stderr)
        return 2
    if problem is not None:
        print(f"FAILED: {problem}")
        return 1
    if doc["type"] == "inclusion":
        print(f"OK: record seq {doc['seq']} is in the signed tree of size {doc['size']}")
    else:
        print(f"OK: the signed tree of size {doc['size2']} extends the one of size {doc['size1']}")
    return 0


def tail_command(args: argparse.Namespace) -> int:
    """`bastion audit tail [-n N | --from-seq SEQ] [-f]`."""
    from audit_proxy.export import ExportError, follow, open_reader
    from audit_proxy.store import AuditStoreUnavailable

    try:
        store = open_reader(*_location(args))
    except (ConfigError, ExportError, AuditStoreUnavailable, OSError) as exc:
        print(f"{PROG} tail: {exc}", file=sys.stderr)
        return 1
    try:
        start = args.from_seq
        if start is None:
            start = max(0, len(store.leaf_hashes()) - args.n)
        for entry in follow(store, start, args.follow):
            print(json.dumps(entry, ensure_ascii=False), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        store.close()
    return 0


def public_key_command(args: argparse.Namespace) -> int:
    """`bastion audit public-key`."""
    from audit_proxy.export import ExportError, public_key_pem

    try:
        print(public_key_pem(_data_dir(args)), end="")
    except (ConfigError, ExportError, OSError) as exc:
        print(f"{PROG} public-key: {exc}", file=sys.stderr)
        return 1
    return 0


def evidence_digest_command(args: argparse.Namespace) -> int:
    """`bastion audit evidence-digest`: the value comes on stdin (one trailing newline is
    dropped), never on the command line, where shell history and `ps` would keep it."""
    from audit_proxy.checkpoints import Signer, SigningKeyError
    from audit_proxy.policy.engine import evidence_digest

    try:
        keys = Signer.load(_data_dir(args)).evidence_keys()
    except ConfigError as exc:
        print(f"{PROG} evidence-digest: {exc}", file=sys.stderr)
        return 1
    except SigningKeyError as exc:
        print(
            f"{PROG} evidence-digest: {exc}: the digests are keyed by the proxy's signing key; "
            "run this with the proxy's --data-dir",
            file=sys.stderr,
        )
        return 1
    value = sys.stdin.read().removesuffix("\n")
    if not value:
        print(f"{PROG} evidence-digest: give the value on stdin", file=sys.stderr)
        return 2
    # After a key rotation, records of each key's time hold digests under its evidence key.
    current, *retired = keys
    print(evidence_digest(current[1], value))
    for key_id, key in retired:
        print(f"{evidence_digest(key, value)}  (records signed by key {key_id[:16]}, retired)")
    return 0


def purge_cutoff(text: str, now: datetime | None = None) -> datetime:
    """Parse `--before`: a date (midnight UTC) or an ISO 8601 time, not in the future."""
    try:
        cutoff = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date: give YYYY-MM-DD or an ISO 8601 time such as "
            "2025-01-31T00:00:00+00:00"
        ) from None
    if cutoff.tzinfo is None:
        cutoff = cutoff.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    if cutoff > now:
        raise argparse.ArgumentTypeError(
            f"{text!r} is in the future (now is {now.isoformat(timespec='seconds')}): "
            "purge takes a date in the past"
        )
    return cutoff


def purge_command(args: argparse.Namespace) -> int:
    """`bastion audit purge --before DATE`: exit 0 when the payloads are shredded for good."""
    from audit_proxy.export import AUDIT_DB
    from audit_proxy.store import AuditStore, AuditStoreUnavailable

    cutoff: datetime = args.before
    when = cutoff.isoformat()
    store: AuditStore | PostgresAuditStore
    try:
        config = load_config(args.config, {"data_dir": args.data_dir, "store_url": args.store_url})
        if config.store_url is not None:
            from audit_proxy.pg_store import PostgresAuditStore

            password = config.store_password.get_secret_value() if config.store_password else None
            # Refuses a database without an audit log; the purge brings its schema up to date.
            store = PostgresAuditStore(config.store_url, password, migrate_schema=False)
            left_behind = (
                "a transaction older than the purge kept VACUUM from removing the old row "
                f"versions that hold them in {store.where}, and until it ends it can read them"
            )
        else:
            path = config.data_dir / AUDIT_DB
            if not path.exists():
                print(f"{PROG} purge: no audit store in {config.data_dir}", file=sys.stderr)
                return 1
            store = AuditStore(path)
            left_behind = (
                f"a reader kept the write-ahead log {path}-wal from being truncated, "
                "so older copies of them may remain there"
            )
    except (ConfigError, AuditStoreUnavailable, OSError) as exc:
        print(f"{PROG} purge: {exc}", file=sys.stderr)
        return 1
    try:
        if not args.yes:
            count = store.count_unshredded(cutoff)
            if not sys.stdin.isatty():
                print(
                    f"{PROG} purge: would shred {count} payloads of records received before "
                    f"{when}; pass --yes to do it without a prompt",
                    file=sys.stderr,
                )
                return 2
            answer = input(
                f"Shred {count} payloads of records received before {when}? "
                "This cannot be undone. [y/N] "
            )
            if answer.strip().lower() not in {"y", "yes"}:
                print("nothing shredded", file=sys.stderr)
                return 1
        result = store.purge_payloads(cutoff)
    except (AuditStoreUnavailable, sqlite3.Error) as exc:
        print(f"{PROG} purge: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(f"shredded {result.shredded} payloads of records received before {when}")
    if not result.wal_truncated:
        print(
            f"{PROG} purge: the keys are destroyed, but {left_behind}; "
            "run the purge again when the readers are done",
            file=sys.stderr,
        )
        return 1
    return 0


def rotate_key_command(args: argparse.Namespace) -> int:
    """`bastion audit rotate-key`: with the proxy stopped (SQLite), or with the replicas running
    (PostgreSQL: each then needs the new key files, see the message)."""
    from audit_proxy.key_rotation import RotationError, rotate_signing_key

    try:
        data_dir, database = _location(args)
        rotation = rotate_signing_key(
            data_dir,
            database.url if database is not None else None,
            database.password if database is not None else None,
        )
    except (ConfigError, RotationError, OSError) as exc:
        print(f"{PROG} rotate-key: {exc}", file=sys.stderr)
        return 1
    transition = rotation.transition
    print(
        f"signing key {transition.from_key_id[:16]} retired at size {transition.size}; "
        f"key {transition.to_key_id[:16]} signs from now on "
        f"({rotation.rewrapped} payload keys wrapped anew). The log's id and the public key "
        "auditors pin are unchanged."
    )
    if database is not None:
        print(
            "Replicas still on the old key keep recording but sign no checkpoint: copy "
            f"audit-signing-key.pem, audit-log-key.pub and audit-retired-keys.json from {data_dir} "
            "into each replica's data dir (replicas that share this one have them already); a "
            "running replica signs on with them at its next checkpoint, with no restart."
        )
    return 0


def siem_resend_command(args: argparse.Namespace) -> int:
    """`bastion audit siem-resend --from SEQ`: a request the proxy that ships to the SIEM takes
    at its next pass (within a second), or at its next start."""
    from audit_proxy.checkpoints import Signer, SigningKeyError
    from audit_proxy.export import ExportError, open_reader
    from audit_proxy.siem import FileCursors
    from audit_proxy.store import AuditStore, AuditStoreUnavailable

    try:
        config = _config(args)
        sinks, configured = _siem_sinks(config, args.sink)
        data_dir, database = _location_of(config)
        log_id = Signer.load(data_dir).log_id
        store = open_reader(data_dir, database)
    except (ConfigError, SigningKeyError, ExportError, OSError) as exc:
        print(f"{PROG} siem-resend: {exc}", file=sys.stderr)
        return 1
    try:
        if not store.leaves_from(args.from_seq, 1):
            print(
                f"{PROG} siem-resend: the log has no record seq {args.from_seq} yet; "
                f"`{PROG} tail -n 1` shows its last",
                file=sys.stderr,
            )
            return 1
        if isinstance(store, AuditStore):
            FileCursors(data_dir, log_id).ask_resend(sinks, args.from_seq)
        else:
            store.ask_siem_resend(log_id, sinks, args.from_seq)
    except (AuditStoreUnavailable, sqlite3.Error, OSError) as exc:
        print(f"{PROG} siem-resend: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(
        f"asked the SIEM export ({', '.join(sinks)}) to ship the log again from seq "
        f"{args.from_seq}: a running proxy starts within a second, a stopped one when it next "
        "starts; the SIEM may then hold records twice (dedupe on seq and log_id)"
    )
    if not configured:
        print(
            "note: the config names no SIEM sink (siem_jsonl_path, siem_syslog_url): if the "
            "proxy ships to none (no --siem-jsonl or --siem-syslog flag either), this does nothing"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Just these commands, without the full `bastion` CLI (tests)."""
    parser = argparse.ArgumentParser(prog="bastion")
    add_audit_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
