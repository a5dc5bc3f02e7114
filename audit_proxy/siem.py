"""SIEM export: ship every audit-log leaf, as it is appended, to a JSONL file and/or syslog.

A leaf is the record without its payload (the row binds the prompt and the answer by SHA-256
only), so nothing shipped holds a prompt, an answer or a key. Each signed checkpoint (and each
key transition) goes out too, once the leaves it covers have: so the SIEM's copy can itself be
checked offline against the log's public key, complete and unaltered up to its last checkpoint
(`bastion audit verify --siem`, see `audit_proxy.verify_siem`). Each sink keeps its own cursor in
the data directory (0600) and advances it only after the collector took the batch: delivery is
at-least-once. After a crash or a failed batch a record can arrive twice; dedupe on `seq`
(with `log_id`). Over TCP and TLS "took" means the kernel accepted the bytes; RFC 6587 and
RFC 5425 have no acknowledgements, so what a collector holds unprocessed when it crashes is lost
on its side. Over RELP (`relp://`, `relp+tls://`; `audit_proxy.relp`) "took" means the collector
acknowledged every message of the batch. UDP syslog is best effort by nature.

What a collector lost is shipped again on request: `bastion audit siem-resend --from SEQ` leaves
a request beside the cursors (a 0600 file, or a row in PostgreSQL), and the process that ships
takes it at its next pass, moves the sink's cursors back to SEQ (and its checkpoint and key
transition cursors to those over SEQ) and ships from there: the gap `verify --siem` names is
filled without the whole log going out again.

With several replicas on one PostgreSQL log, one of them ships: the one holding the log's SIEM
lock (a PostgreSQL advisory lock), with the cursors kept in the database. When it goes, another
takes the lock and carries on from the cursors; the batch in flight at that moment may arrive
twice. JSONL files are per host, so replicated setups should ship by syslog.

Syslog messages are RFC 5424, facility "log audit" (13), severity informational, with the
structured data element `bastion@32473` (32473 is the documentation enterprise number of
RFC 5612) carrying `seq`, `kind`, `record_id`, `leaf_hash` and `log_id`; TCP uses RFC 6587
octet-counting framing.

`tls://HOST:PORT` is syslog over TLS (RFC 5425, the same octet-counted frames), and
`relp+tls://` RELP over TLS: the collector's certificate must verify against the system's CAs
or `siem_syslog_ca_file` and name HOST, and the proxy shows its own certificate when
`siem_syslog_certfile`/`siem_syslog_keyfile` are set (collectors that take only known senders
ask for one). Under TLS 1.3 a collector that refuses
the proxy's certificate says so only after the handshake has completed on the proxy's side, so
a new connection waits for the collector's verdict before it carries a record (see
`_await_verdict`): otherwise the first batch would go into a connection about to be refused,
and count as shipped.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import select
import socket
import ssl
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

from audit_proxy.checkpoints import Checkpoint, KeyTransition
from audit_proxy.merkle import canonical_json
from audit_proxy.nonblocking_read import read_waiting
from audit_proxy.relp import RelpSession
from audit_proxy.tls_files import (
    TlsFileError,
    load_ca_bundle,
    load_certificate,
    require_both_or_neither,
)

log = logging.getLogger("bastion.proxy.siem")

Leaf = tuple[int, str, str, bytes, bytes]
STDOUT = "-"
JSONL_SINK = "jsonl"
SYSLOG_SINK = "syslog"
SINK_NAMES = (JSONL_SINK, SYSLOG_SINK)
APP_NAME = "bastion-proxy"
SD_ID = "bastion@32473"
FACILITY_LOG_AUDIT = 13
SEVERITY_INFO = 6
BATCH = 500
SEND_TIMEOUT_S = 5.0
# How long a new TLS connection waits for the collector to accept or refuse this proxy's
# certificate when it sends no session ticket to say so (see `_await_verdict`).
VERDICT_WAIT_S = 1.0
_BOM = b"\xef\xbb\xbf"


class LeafSource(Protocol):
    """The audit store's read side, as the forwarder needs it."""

    def leaves_from(self, seq: int, limit: int = 1000) -> list[Leaf]: ...

    def checkpoints_from(self, size: int, limit: int = 1000) -> list[Checkpoint]: ...

    def key_transitions(self) -> list[KeyTransition]: ...


@dataclass(frozen=True)
class SignedHead:
    """A signed checkpoint or key transition, as shipped: `doc` is its `as_dict()`."""

    kind: Literal["checkpoint", "key_transition"]
    doc: dict[str, Any]

    @property
    def size(self) -> int:
        return int(self.doc["size"])


class SiemConfigError(ValueError):
    """A SIEM setting cannot be used; the message names it and says what to write."""


Transport = Literal["udp", "tcp", "tls", "relp", "relp+tls"]
_TRANSPORTS: tuple[Transport, ...] = ("udp", "tcp", "tls", "relp", "relp+tls")


@dataclass(frozen=True)
class SyslogTarget:
    transport: Transport
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.transport}://{self.host}:{self.port}"

    @property
    def secure(self) -> bool:
        return self.transport in ("tls", "relp+tls")

    @property
    def relp(self) -> bool:
        return self.transport.startswith("relp")


def parse_syslog_url(url: str) -> SyslogTarget:
    """`udp://`, `tcp://`, `tls://`, `relp://` or `relp+tls://host:port`; SiemConfigError
    otherwise."""
    parts = urlsplit(url.strip())
    try:
        port = parts.port
    except ValueError:
        port = None
    transport = next((t for t in _TRANSPORTS if t == parts.scheme), None)
    if transport is None or not parts.hostname or port is None:
        raise SiemConfigError(
            f"siem_syslog_url: {url!r} is not udp://, tcp://, tls://, relp:// or "
            "relp+tls://HOST:PORT (for example tls://siem.internal:6514 for syslog over TLS)"
        )
    return SyslogTarget(transport, parts.hostname, port)


@dataclass(frozen=True)
class SyslogTls:
    """The files a TLS collector needs: the CAs that vouch for it, and the proxy's own
    certificate and key for a collector that asks for one (settings `siem_syslog_*`)."""

    ca_file: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None

    def given(self) -> list[str]:
        named = (("siem_syslog_ca_file", self.ca_file), ("siem_syslog_certfile", self.certfile),
                 ("siem_syslog_keyfile", self.keyfile))  # fmt: skip
        return [setting for setting, path in named if path is not None]


def syslog_tls_context(tls: SyslogTls) -> ssl.SSLContext:
    """The client context for a TLS collector, every file checked; SiemConfigError names the
    setting and the file that cannot be used."""
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 9662 (updating RFC 5425)
    try:
        require_both_or_neither(
            "siem_syslog_certfile", tls.certfile, "siem_syslog_keyfile", tls.keyfile,
            "for a collector that asks for no certificate",
        )  # fmt: skip
        if tls.ca_file is not None:
            load_ca_bundle(context, "siem_syslog_ca_file", tls.ca_file)
        if tls.certfile is not None and tls.keyfile is not None:
            load_certificate(
                context, "siem_syslog_certfile", tls.certfile, "siem_syslog_keyfile", tls.keyfile
            )
    except TlsFileError as exc:
        raise SiemConfigError(str(exc)) from None
    return context


def failure_reason(exc: OSError) -> str:
    """Why shipping failed, in words an operator can act on."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"the collector's certificate did not verify ({exc.verify_message}); set "
            "siem_syslog_ca_file to the CA bundle that issued it, and name the collector in "
            "siem_syslog_url as its certificate does"
        )
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        if "ALERT" in reason and ("CERTIFICATE" in reason or "UNKNOWN_CA" in reason):
            return (
                f"the collector refused this proxy's certificate ({reason}); set "
                "siem_syslog_certfile and siem_syslog_keyfile to a certificate it trusts"
            )
        return f"TLS with the collector failed ({reason})"
    return exc.strerror or str(exc) or type(exc).__name__


# -- formatting --------------------------------------------------------------------------------


def _record_time(canonical: bytes) -> str:
    try:
        record = json.loads(canonical).get("record", {})
        stamp = record.get("received_at") or record.get("finished_at")
    except (ValueError, AttributeError):
        stamp = None
    return _timestamp(stamp)


def _timestamp(stamp: str | None) -> str:
    """An RFC 5424 TIMESTAMP for an ISO 8601 time (now, where it is none)."""
    try:
        when = datetime.fromisoformat(stamp) if isinstance(stamp, str) else datetime.now(UTC)
    except ValueError:
        when = datetime.now(UTC)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _sd_value(value: str) -> str:
    # RFC 5424 section 6.3.3: '"', '\' and ']' are escaped inside a PARAM-VALUE.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _header_field(value: str, limit: int) -> str:
    cleaned = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return cleaned or "-"


def syslog_message(leaf: Leaf, log_id: str | None, hostname: str, procid: int) -> bytes:
    """One RFC 5424 message for a leaf; the MSG is the leaf's canonical JSON (no payload)."""
    seq, kind, record_id, digest, canonical = leaf
    params = {
        "seq": str(seq),
        "kind": kind,
        "record_id": record_id,
        "leaf_hash": digest.hex(),
        "log_id": log_id or "-",
    }
    return _rfc5424(_record_time(canonical), hostname, procid, kind, params, canonical)


def syslog_head_message(head: SignedHead, hostname: str, procid: int) -> bytes:
    """One RFC 5424 message for a signed head; the MSG is its canonical JSON."""
    params = {"size": str(head.size), "root": str(head.doc.get("root", "-")),
              "log_id": str(head.doc.get("log_id", "-"))}  # fmt: skip
    message = canonical_json(head.doc)
    return _rfc5424(_timestamp(head.doc.get("time")), hostname, procid, head.kind, params, message)


def _rfc5424(
    timestamp: str, hostname: str, procid: int, msgid: str, params: dict[str, str], msg: bytes
) -> bytes:
    sd = "[" + SD_ID + "".join(f' {k}="{_sd_value(v)}"' for k, v in params.items()) + "]"
    header = " ".join(
        (
            f"<{FACILITY_LOG_AUDIT * 8 + SEVERITY_INFO}>1",
            timestamp,
            _header_field(hostname, 255),
            APP_NAME,
            str(procid),
            _header_field(msgid, 32),
            sd,
        )
    )
    return header.encode() + b" " + _BOM + msg


def jsonl_line(leaf: Leaf, log_id: str | None) -> bytes:
    """One JSON line for a leaf: where it sits in the log, its hash, and the record itself."""
    seq, kind, record_id, digest, canonical = leaf
    doc = {
        "type": "leaf",
        "log_id": log_id,
        "seq": seq,
        "kind": kind,
        "record_id": record_id,
        "leaf_hash": digest.hex(),
        "leaf": json.loads(canonical),
    }
    return _json_line(doc)


def jsonl_head_line(head: SignedHead) -> bytes:
    """One JSON line for a signed checkpoint or key transition."""
    return _json_line({"type": head.kind, **head.doc})


def _json_line(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


# -- sinks -------------------------------------------------------------------------------------


class Sink(Protocol):
    name: str

    def ship(self, leaves: list[Leaf], log_id: str | None) -> None:
        """Deliver the batch or raise OSError (then the whole batch is tried again later)."""
        ...

    def ship_heads(self, heads: list[SignedHead]) -> None:
        """As `ship`, for signed checkpoints and key transitions."""
        ...

    def close(self) -> None: ...


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


class JsonlSink:
    """Appends JSON lines to a 0600 file (fsynced per batch), or writes them to stdout."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.to_stdout = str(path) == STDOUT
        self.name = JSONL_SINK
        if not self.to_stdout:
            _private_dir(path.parent)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.fchmod(fd, 0o600)
            finally:
                os.close(fd)

    def __str__(self) -> str:
        return "stdout" if self.to_stdout else str(self.path)

    def ship(self, leaves: list[Leaf], log_id: str | None) -> None:
        self._append(b"".join(jsonl_line(leaf, log_id) for leaf in leaves))

    def ship_heads(self, heads: list[SignedHead]) -> None:
        self._append(b"".join(jsonl_head_line(head) for head in heads))

    def _append(self, data: bytes) -> None:
        if self.to_stdout:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        return None


class SyslogSink:
    """RFC 5424 over UDP (a datagram per record), TCP (RFC 6587 octet counting), TLS
    (RFC 5425: the same frames) or RELP (`audit_proxy.relp`: a batch counts as shipped once
    the collector acknowledged every message), plain or over TLS; `tls` is the context for
    tls:// and relp+tls://."""

    def __init__(self, target: SyslogTarget, tls: ssl.SSLContext | None = None) -> None:
        if target.secure != (tls is not None):
            raise ValueError(f"{target}: a TLS context goes with a TLS target and only with it")
        self.target = target
        self.name = SYSLOG_SINK
        self._tls = tls
        self._hostname = socket.gethostname()
        self._procid = os.getpid()
        self._sock: socket.socket | None = None
        self._relp: RelpSession | None = None
        self.connects = 0  # connections opened (datagram sockets too)

    def __str__(self) -> str:
        return str(self.target)

    def ship(self, leaves: list[Leaf], log_id: str | None) -> None:
        self._send([syslog_message(leaf, log_id, self._hostname, self._procid) for leaf in leaves])

    def ship_heads(self, heads: list[SignedHead]) -> None:
        self._send([syslog_head_message(head, self._hostname, self._procid) for head in heads])

    def _send(self, messages: list[bytes]) -> None:
        try:
            sock = self._connected()
            if self._relp is not None:
                self._relp.send(messages)
            elif self.target.transport != "udp":
                sock.sendall(b"".join(b"%d %s" % (len(m), m) for m in messages))
            else:
                for message in messages:
                    sock.send(message)
        except OSError:
            self._drop()
            raise

    def _connected(self) -> socket.socket:
        stream = self.target.transport != "udp"
        if self._sock is not None and stream and self._ended():
            self._drop()
        if self._sock is None:
            kind = socket.SOCK_STREAM if stream else socket.SOCK_DGRAM
            info = socket.getaddrinfo(self.target.host, self.target.port, type=kind)[0]
            sock = socket.socket(info[0], info[1], info[2])
            sock.settimeout(SEND_TIMEOUT_S)
            try:
                sock.connect(info[4])
                if self._tls is not None:
                    sock = self._tls.wrap_socket(sock, server_hostname=self.target.host)
                    _await_verdict(sock)
                if self.target.relp:
                    self._relp = RelpSession(sock)
                    self._relp.open()
            except OSError:
                sock.close()
                self._relp = None
                raise
            self._sock = sock
            self.connects += 1
        return self._sock

    def _ended(self) -> bool:
        """Whether the collector ended the connection in the meantime."""
        assert self._sock is not None
        if self._relp is not None:
            return self._relp.ended_by_collector()
        return _peer_closed(self._sock)

    def close(self) -> None:
        """End the connection in order, so that the collector sees no cut: RELP's `close`,
        then TLS's close_notify, waiting at most 0.5 s for each answer."""
        if self._sock is not None:
            self._sock.settimeout(0.5)
            if self._relp is not None:
                with contextlib.suppress(OSError):
                    self._relp.close()
            if isinstance(self._sock, ssl.SSLSocket):
                with contextlib.suppress(OSError, ValueError):
                    self._sock.unwrap()
        self._drop()

    def _drop(self) -> None:
        """Let the connection go at once: after a failure, the collector may not answer."""
        self._relp = None
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


def _await_verdict(sock: ssl.SSLSocket) -> None:
    """Once a TLS 1.3 handshake is through: wait until the collector has accepted this proxy's
    certificate (it sends a session ticket) or refused it (an alert: raised as ssl.SSLError),
    for at most VERDICT_WAIT_S of silence, taken as acceptance. Under TLS 1.2 a refusal fails
    the handshake itself."""
    if sock.version() != "TLSv1.3":
        return
    deadline = time.monotonic() + VERDICT_WAIT_S
    while not (sock.session is not None and sock.session.has_ticket):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        select.select([sock], [], [], remaining)
        if _peer_closed(sock):
            raise ConnectionResetError(
                "the collector closed the connection after the TLS handshake"
            )


def _peer_closed(sock: socket.socket) -> bool:
    """True when a stream collector has closed its end (so a write would vanish into a dead
    socket). Raises ssl.SSLError when a TLS collector sent an alert instead."""
    try:
        data = read_waiting(sock)
    except ssl.SSLError:
        raise
    except OSError:
        return True
    # A collector has nothing to say over RFC 6587 or 5425; whatever it sent is dropped.
    return data == b""


# -- cursors -----------------------------------------------------------------------------------


class CursorStore(Protocol):
    """Where each sink's cursor (the next seq it has to ship) is kept, and the operator's
    requests to ship again from an earlier seq (`bastion audit siem-resend`)."""

    def load(self, sink: str) -> int: ...

    def save(self, sink: str, next_seq: int) -> None:
        """Move the cursor on, after a delivery."""
        ...

    def rewind(self, sink: str, next_seq: int) -> None:
        """Move the cursor back to `next_seq` if it is past it (a resend)."""
        ...

    def take_resend(self, sink: str) -> int | None:
        """The earliest seq the operator asked `sink` to ship again from, if any. The request
        stays until `forget_resend`: one that was taken but not carried out (a failed write of
        the cursors) is taken again."""
        ...

    def forget_resend(self, sink: str, from_seq: int) -> None:
        """The resend from `from_seq` is carried out: drop it, and any from a later seq (they
        ship nothing it does not); one asked meanwhile from an earlier seq stays."""
        ...


class Leadership(Protocol):
    """Whether this process is the one that ships now (see the top)."""

    def leading(self) -> bool: ...

    def close(self) -> None: ...


class AlwaysLead:
    """One writer, one shipper: the SQLite store's case."""

    def leading(self) -> bool:
        return True

    def close(self) -> None:
        pass


class FileCursors:
    """Cursors in 0600 files `siem-SINK.cursor` in the data dir; reset for a new log. A resend
    request waits in `siem-SINK.resend` until the forwarder takes it."""

    def __init__(self, directory: Path, log_id: str | None) -> None:
        self.directory = directory
        self.log_id = log_id

    def _path(self, sink: str) -> Path:
        return self.directory / f"siem-{sink}.cursor"

    def _resend_path(self, sink: str) -> Path:
        return self.directory / f"siem-{sink}.resend"

    def ask_resend(self, sinks: Sequence[str], from_seq: int) -> None:
        """Ask each of `sinks` to ship the log again from `from_seq` (a request already waiting
        keeps the earlier of the two)."""
        for sink in sinks:
            path = self._resend_path(sink)
            waiting = None
            with contextlib.suppress(SiemConfigError):
                waiting = self._read_resend(path)  # (none, or an unreadable one: replaced)
            earliest = from_seq if waiting is None else min(from_seq, waiting)
            _write_private_json(path, {"log_id": self.log_id, "from_seq": earliest})

    def _taken_path(self, sink: str) -> Path:
        return self.directory / f"siem-{sink}.resend.taken"

    def take_resend(self, sink: str) -> int | None:
        path, taken = self._resend_path(sink), self._taken_path(sink)
        if not taken.exists():
            try:
                # Renamed: a request written meanwhile is a new file, for the next pass.
                os.replace(path, taken)
            except FileNotFoundError:
                return None
        try:
            from_seq = self._read_resend(taken, path)
        except SiemConfigError as exc:
            log.error("%s; ask again with `bastion audit siem-resend`", exc)
            from_seq = None
        if from_seq is None:
            taken.unlink(missing_ok=True)
        return from_seq

    def forget_resend(self, sink: str, from_seq: int) -> None:
        self._taken_path(sink).unlink(missing_ok=True)

    def _read_resend(self, path: Path, named: Path | None = None) -> int | None:
        """The seq a request file asks for (None: another log's); `named`: the file's name
        before the forwarder took it."""
        named = named or path
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise SiemConfigError(f"{named}: unreadable SIEM resend request ({exc})") from None
        seq = doc.get("from_seq") if isinstance(doc, dict) else None
        if not isinstance(seq, int) or seq < 0:
            raise SiemConfigError(f"{named}: 'from_seq' is missing or not a seq")
        if doc.get("log_id") != self.log_id:
            log.warning("%s was asked of another audit log; ignored", named)
            return None
        return seq

    def load(self, sink: str) -> int:
        path = self._path(sink)
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:
            raise SiemConfigError(
                f"{path}: unreadable SIEM cursor ({exc}); delete it to ship the whole log "
                "again from the start"
            ) from None
        seq = doc.get("next_seq") if isinstance(doc, dict) else None
        if not isinstance(seq, int) or seq < 0:
            raise SiemConfigError(
                f"{path}: 'next_seq' is missing or not a count; delete the file to ship "
                "the whole log again from the start"
            )
        if doc.get("log_id") != self.log_id:
            log.warning("%s belongs to another audit log; shipping this log from seq 0", path)
            return 0
        return seq

    def save(self, sink: str, next_seq: int) -> None:
        _write_private_json(self._path(sink), {"log_id": self.log_id, "next_seq": next_seq})

    def rewind(self, sink: str, next_seq: int) -> None:
        if next_seq < self.load(sink):
            self.save(sink, next_seq)


def _write_private_json(path: Path, doc: dict[str, Any]) -> None:
    """Replace `path` (0600) with `doc`, whole or not at all."""
    _private_dir(path.parent)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, json.dumps(doc).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


# -- the forwarder -----------------------------------------------------------------------------


@dataclass
class _Lane:
    sink: Sink
    next_seq: int
    # The smallest size of a signed checkpoint it has not had, and how many key transitions
    # it has had (each kept as a cursor of its own, beside the leaves').
    next_checkpoint: int = 0
    transitions: int = 0
    failures: int = 0
    retry_at: float = 0.0
    shipped: int = 0

    @property
    def checkpoint_cursor(self) -> str:
        return f"{self.sink.name}.checkpoints"

    @property
    def transition_cursor(self) -> str:
        return f"{self.sink.name}.transitions"


class SiemForwarder:
    """Tails the audit log in a thread and ships each new leaf to every sink.

    A sink that fails is retried with exponential backoff, capped at `max_backoff_s`; the
    others go on. `status()` says, per sink, how many leaves are waiting.
    """

    def __init__(
        self,
        source: LeafSource,
        sinks: list[Sink],
        cursors: CursorStore,
        log_id: str | None,
        *,
        leadership: Leadership | None = None,
        poll_interval_s: float = 0.5,
        max_backoff_s: float = 30.0,
    ) -> None:
        self.source = source
        self.log_id = log_id
        self.cursors = cursors
        self.leadership: Leadership = leadership or AlwaysLead()
        self.poll_interval_s = poll_interval_s
        self.max_backoff_s = max_backoff_s
        self._lanes = [_Lane(sink, 0) for sink in sinks]
        for lane in self._lanes:
            self._load_cursors(lane)
        self._head = min((lane.next_seq for lane in self._lanes), default=0)
        self._leading: bool | None = None  # unknown until the first pass
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        for lane in self._lanes:
            log.info("SIEM export to %s from seq %d", lane.sink, lane.next_seq)
        self._thread = threading.Thread(target=self._run, name="siem-forwarder", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ship what is pending (sinks not in backoff), then stop; leaves the rest for next time."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        for lane in self._lanes:
            lane.sink.close()
        self.leadership.close()
        if not self._leading:
            return  # the replica that leads ships what is pending
        waiting = {name: s["pending"] for name, s in self.status().items() if s["pending"]}
        if waiting:
            log.warning("SIEM export stopped with leaves pending (shipped on restart): %s", waiting)

    def status(self) -> dict[str, dict[str, int]]:
        """Per sink: leaves pending, leaves shipped since start, consecutive failures."""
        with self._lock:
            return {
                lane.sink.name: {
                    "pending": max(0, self._head - lane.next_seq),
                    "shipped": lane.shipped,
                    "failures": lane.failures,
                    "leading": int(bool(self._leading)),
                }
                for lane in self._lanes
            }

    def run_once(self, max_batches: int | None = None) -> None:
        """One pass: note the log's head, and ship to each sink that is due (all it can take).

        Only while leading; on becoming the leader, the cursors are read again (another
        replica may have moved them).
        """
        leading = self.leadership.leading()
        if leading != self._leading:
            if self._leading is not None or not isinstance(self.leadership, AlwaysLead):
                log.info(
                    "SIEM export: %s",
                    "this replica ships now" if leading else "another replica ships; standing by",
                )
            if leading:
                for lane in self._lanes:
                    self._load_cursors(lane)
        self._leading = leading
        if not leading:
            return  # a replica standing by reads nothing
        self._advance_head()
        for lane in self._lanes:
            self._take_resend(lane)
        self._drop_resends_for_absent_sinks()
        now = time.monotonic()
        for lane in self._lanes:
            if now >= lane.retry_at and self._ship(lane, max_batches):
                self._ship_heads(lane)

    def _take_resend(self, lane: _Lane) -> None:
        """Move the sink's cursors back where the operator asked it to ship again from: the
        leaves from there, and the signed checkpoints and key transitions over them."""
        from_seq = self.cursors.take_resend(lane.sink.name)
        if from_seq is None:
            return
        if from_seq < lane.next_seq:
            covered = sum(1 for t in self.source.key_transitions() if t.size <= from_seq)
            next_checkpoint = min(lane.next_checkpoint, from_seq + 1)
            transitions = min(lane.transitions, covered)
            # The kept cursors first: where that fails, the request is taken again next pass.
            self.cursors.rewind(lane.sink.name, from_seq)
            self.cursors.rewind(lane.checkpoint_cursor, next_checkpoint)
            self.cursors.rewind(lane.transition_cursor, transitions)
            again = lane.next_seq - from_seq
            with self._lock:
                lane.next_seq = from_seq
            lane.next_checkpoint, lane.transitions = next_checkpoint, transitions
            log.warning(
                "SIEM %s %s: shipping again from seq %d, as asked (%d leaves it had already, "
                "and the signed checkpoints over them)",
                lane.sink.name, lane.sink, from_seq, again,
            )  # fmt: skip
        else:
            log.info(
                "SIEM %s %s: asked to resend from seq %d, but it has shipped up to seq %d only; "
                "nothing to resend",
                lane.sink.name, lane.sink, from_seq, lane.next_seq - 1,
            )  # fmt: skip
        self.cursors.forget_resend(lane.sink.name, from_seq)

    def _drop_resends_for_absent_sinks(self) -> None:
        have = {lane.sink.name for lane in self._lanes}
        for name in SINK_NAMES:
            from_seq = None if name in have else self.cursors.take_resend(name)
            if from_seq is not None:
                self.cursors.forget_resend(name, from_seq)
                log.info("SIEM: a resend was asked of the %s sink, which this proxy lacks", name)

    def _load_cursors(self, lane: _Lane) -> None:
        lane.next_seq = self.cursors.load(lane.sink.name)
        lane.next_checkpoint = self.cursors.load(lane.checkpoint_cursor)
        lane.transitions = self.cursors.load(lane.transition_cursor)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:
                log.exception("SIEM export pass failed; retrying")
            self._stop.wait(self.poll_interval_s)
        # A last, bounded pass at shutdown; whatever is left waits for the next start.
        with contextlib.suppress(Exception):
            self.run_once(max_batches=1)

    def _advance_head(self) -> None:
        while True:
            newer = self.source.leaves_from(self._head, BATCH)
            if newer:
                with self._lock:
                    self._head = newer[-1][0] + 1
            if len(newer) < BATCH:
                return

    def _ship(self, lane: _Lane, max_batches: int | None) -> bool:
        """Ship the sink's pending leaves; False when it failed."""
        batches = 0
        while max_batches is None or batches < max_batches:
            batches += 1
            leaves = self.source.leaves_from(lane.next_seq, BATCH)
            if not leaves:
                return True
            try:
                lane.sink.ship(leaves, self.log_id)
            except OSError as exc:
                self._failed(lane, exc)
                return False
            lane.next_seq = leaves[-1][0] + 1
            self.cursors.save(lane.sink.name, lane.next_seq)
            with self._lock:
                lane.shipped += len(leaves)
                self._head = max(self._head, lane.next_seq)
            self._back(lane)
            if len(leaves) < BATCH:
                return True
        return True

    def _ship_heads(self, lane: _Lane) -> None:
        """Ship the signed checkpoints and key transitions over leaves the sink already has."""
        covered = lane.next_seq

        def has_leaves(head: Checkpoint | KeyTransition) -> bool:
            return head.size <= covered

        checkpoints = list(
            itertools.takewhile(has_leaves, self.source.checkpoints_from(lane.next_checkpoint))
        )
        transitions = list(
            itertools.takewhile(has_leaves, self.source.key_transitions()[lane.transitions :])
        )
        heads = [SignedHead("key_transition", t.as_dict()) for t in transitions]
        heads += [SignedHead("checkpoint", c.as_dict()) for c in checkpoints]
        if not heads:
            return
        try:
            lane.sink.ship_heads(heads)
        except OSError as exc:
            self._failed(lane, exc)
            return
        if checkpoints:
            lane.next_checkpoint = checkpoints[-1].size + 1
            self.cursors.save(lane.checkpoint_cursor, lane.next_checkpoint)
        if transitions:
            lane.transitions += len(transitions)
            self.cursors.save(lane.transition_cursor, lane.transitions)
        self._back(lane)

    def _back(self, lane: _Lane) -> None:
        """After a delivery: a sink that had failed is working again."""
        if lane.failures:
            log.info("SIEM %s %s is back; shipping resumed", lane.sink.name, lane.sink)
            lane.failures = 0

    def _failed(self, lane: _Lane, exc: OSError) -> None:
        lane.failures += 1
        delay = min(self.max_backoff_s, self.poll_interval_s * 2 ** min(lane.failures, 16))
        lane.retry_at = time.monotonic() + delay
        pending = self.status()[lane.sink.name]["pending"]
        log.warning(
            "SIEM %s %s failed (%s); %d leaves pending, retry in %.1f s",
            lane.sink.name,
            lane.sink,
            failure_reason(exc),
            pending,
            delay,
        )


def build_forwarder(
    source: LeafSource,
    data_dir: Path,
    log_id: str | None,
    jsonl_path: Path | None,
    syslog_url: str | None,
    max_backoff_s: float = 30.0,
    shared: tuple[CursorStore, Leadership] | None = None,
    syslog_tls: SyslogTls | None = None,
) -> SiemForwarder | None:
    """The forwarder for the configured sinks, or None when none is configured.

    `shared`: cursors and leadership shared by replicas (PostgreSQL); else files in `data_dir`.
    """
    sinks: list[Sink] = []
    if jsonl_path is not None:
        sinks.append(JsonlSink(jsonl_path))
    tls_files = syslog_tls or SyslogTls()
    target = parse_syslog_url(syslog_url) if syslog_url else None
    if tls_files.given() and (target is None or not target.secure):
        raise SiemConfigError(
            f"{', '.join(tls_files.given())} set, but siem_syslog_url is "
            f"{str(target) if target else 'not set'}: these files are for a collector at "
            "tls:// or relp+tls://HOST:PORT; set siem_syslog_url to one, or drop them"
        )
    if target is not None:
        context = syslog_tls_context(tls_files) if target.secure else None
        sinks.append(SyslogSink(target, context))
    if not sinks:
        return None
    cursors, leadership = shared or (FileCursors(data_dir, log_id), AlwaysLead())
    return SiemForwarder(
        source, sinks, cursors, log_id, leadership=leadership, max_backoff_s=max_backoff_s
    )
