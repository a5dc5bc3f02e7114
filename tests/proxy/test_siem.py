"""SIEM export from a real proxy to real syslog collectors (TCP and UDP) and a JSONL file."""

from __future__ import annotations

import json
import re
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from audit_proxy.siem import SiemConfigError, parse_syslog_url
from bastion.stack import free_port

from .conftest import SERVICE_KEY, Proxy, start_proxy, stop_proxy
from .fake_upstream import FakeUpstream
from .pki import Issued

PROMPT_MARK = "PROMPT-TEXT-7f3a9c-never-shipped"
RFC5424 = re.compile(
    rb"^<110>1 (?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) (?P<host>\S+) bastion-proxy "
    rb"(?P<procid>\d+) (?P<msgid>request|outcome) \[bastion@32473 seq=\"(?P<seq>\d+)\" "
    rb"kind=\"(?P<kind>request|outcome)\" record_id=\"(?P<record_id>[0-9a-f]{32})\" "
    rb"leaf_hash=\"(?P<leaf_hash>[0-9a-f]{64})\" log_id=\"(?P<log_id>[^\"]+)\"\] "
    rb"\xef\xbb\xbf(?P<msg>\{.*\})$",
    re.DOTALL,
)


class TcpCollector:
    """A syslog collector over TCP that reads RFC 6587 octet-counted frames."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.frames: list[bytes] = []
        self.raw = bytearray()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []

    def start(self) -> TcpCollector:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self._listener = listener
        self._spawn(self._accept, listener)
        return self

    def stop(self) -> None:
        if self._listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would not on Linux.
            self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        for conn in self._conns:
            conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self._conns.clear()
        for thread in self._threads:
            thread.join(5)
        self._threads.clear()

    def _spawn(self, target: Callable[[socket.socket], None], sock: socket.socket) -> None:
        thread = threading.Thread(target=target, args=(sock,), daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            self._conns.append(conn)
            self._spawn(self._read, conn)

    def _read(self, conn: socket.socket) -> None:
        buffer = b""
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            self.raw += data
            buffer += data
            while b" " in buffer:
                length, _, rest = buffer.partition(b" ")
                assert length.isdigit(), f"not octet-counting framing: {buffer[:40]!r}"
                if len(rest) < int(length):
                    break
                self.frames.append(rest[: int(length)])
                buffer = rest[int(length) :]


class UdpCollector:
    def __init__(self) -> None:
        self.port = free_port()
        self.datagrams: list[bytes] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", self.port))
        self._sock.settimeout(0.1)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stopped.is_set():
            try:
                self.datagrams.append(self._sock.recv(65536))
            except TimeoutError:
                continue

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(5)
        self._sock.close()


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def send_requests(proxy: Proxy, key: str, count: int) -> None:
    for i in range(count):
        answer = httpx.post(
            proxy.url + "/v1/completions",
            json={"model": "fake", "prompt": f"{PROMPT_MARK} {i}", "max_tokens": 4},
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )
        assert answer.status_code == 200


def leaf_messages(messages: list[bytes]) -> list[bytes]:
    """The syslog messages that carry leaves (the others carry signed checkpoints)."""
    return [m for m in messages if m.split(b" ", 6)[5] in (b"request", b"outcome")]


def leaf_lines(path: Path) -> list[dict[str, object]]:
    """The JSONL export's leaf lines (the others are signed checkpoints)."""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [line for line in lines if line["type"] == "leaf"]


def parsed(frame: bytes) -> re.Match[bytes]:
    match = RFC5424.match(frame)
    assert match is not None, f"not an RFC 5424 message as expected: {frame[:200]!r}"
    return match


@pytest.fixture(scope="module")
def collector() -> Iterator[TcpCollector]:
    running = TcpCollector().start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def siem_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("siem")


def siem_tls_args(ca: Path | None, cert: Issued | None) -> list[str]:
    """The proxy's flags for a TLS collector: the CA that vouches for it, the proxy's own
    certificate."""
    args = ["--siem-syslog-ca-file", str(ca)] if ca else []
    if cert is not None:
        args += ["--siem-syslog-certfile", str(cert.cert), "--siem-syslog-keyfile", str(cert.key)]
    return args


def start_siem_proxy(upstream: FakeUpstream, home: Path, syslog_url: str, *extra: str) -> Proxy:
    home.mkdir(parents=True, exist_ok=True)
    config = home / "proxy.toml"
    config.write_text("siem_max_backoff_s = 0.5\n")
    return start_proxy(
        upstream.url,
        home / "data",
        home / f"proxy-{time.monotonic_ns()}.log",
        "--config",
        str(config),
        "--siem-syslog",
        syslog_url,
        "--siem-jsonl",
        str(home / "export" / "audit.jsonl"),
        *extra,
    )


@pytest.fixture(scope="module")
def proxy(upstream: FakeUpstream, collector: TcpCollector, siem_home: Path) -> Iterator[Proxy]:
    running = start_siem_proxy(upstream, siem_home, f"tcp://127.0.0.1:{collector.port}")
    yield running
    stop_proxy(running)


def siem_status(proxy: Proxy) -> dict[str, dict[str, int]]:
    health = httpx.get(proxy.url + "/healthz", timeout=5).json()
    return health["siem"]  # type: ignore[no-any-return]


def test_each_request_and_outcome_reaches_the_collector_as_rfc5424(
    proxy: Proxy, collector: TcpCollector, user_key: str
) -> None:
    before = len(leaf_messages(collector.frames))
    send_requests(proxy, user_key, 4)

    wait_for(lambda: len(leaf_messages(collector.frames)) >= before + 8, "8 syslog messages")
    leaves = proxy.store().leaves()
    frames = [parsed(frame) for frame in leaf_messages(collector.frames)]
    assert [int(m["seq"]) for m in frames] == list(range(len(leaves)))
    assert [m["kind"] for m in frames[before:]] == [b"request", b"outcome"] * 4
    for match, (seq, kind, record_id, digest, canonical) in zip(frames, leaves, strict=True):
        assert int(match["seq"]) == seq
        assert match["msgid"] == match["kind"] == kind.encode()
        assert match["record_id"] == record_id.encode()
        assert match["leaf_hash"] == digest.hex().encode()
        assert match["msg"] == canonical
        assert match["host"] == socket.gethostname().encode()
    request_ids = {r.id.encode() for r in proxy.store().requests()}
    assert {m["record_id"] for m in frames} == request_ids
    assert siem_status(proxy)["syslog"]["pending"] == 0


def test_nothing_is_lost_while_the_collector_is_down(
    proxy: Proxy, collector: TcpCollector, user_key: str
) -> None:
    send_requests(proxy, user_key, 1)
    wait_for(
        lambda: len(leaf_messages(collector.frames)) == len(proxy.store().leaves()), "the collector"
    )
    collector.stop()

    send_requests(proxy, user_key, 3)
    wait_for(
        lambda: (
            siem_status(proxy)["syslog"]["pending"] == 6
            and siem_status(proxy)["syslog"]["failures"] > 0
        ),
        "6 leaves pending with the collector down",
    )
    collector.start()

    total = len(proxy.store().leaves())
    wait_for(
        lambda: len(leaf_messages(collector.frames)) >= total,
        "the backlog after the collector came back",
    )
    shipped = {int(parsed(f)["seq"]) for f in leaf_messages(collector.frames)}
    assert sorted(shipped) == list(range(total))
    wait_for(lambda: siem_status(proxy)["syslog"]["failures"] == 0, "the failure count to reset")
    assert siem_status(proxy)["syslog"]["pending"] == 0
    assert "leaves pending" in proxy.log()


def test_the_jsonl_export_is_private_complete_and_parseable(
    proxy: Proxy, siem_home: Path, user_key: str
) -> None:
    send_requests(proxy, user_key, 2)
    path = siem_home / "export" / "audit.jsonl"
    wait_for(
        lambda: len(leaf_lines(path)) == len(proxy.store().leaves()),
        "the JSONL export",
    )

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    lines = leaf_lines(path)
    leaves = proxy.store().leaves()
    assert [(d["seq"], d["kind"], d["record_id"], d["leaf_hash"]) for d in lines] == [
        (seq, kind, record_id, digest.hex()) for seq, kind, record_id, digest, _ in leaves
    ]
    assert all(
        line["leaf"] == json.loads(leaf[4]) for line, leaf in zip(lines, leaves, strict=True)
    )
    cursor = siem_home / "data" / "siem-jsonl.cursor"
    assert stat.S_IMODE(cursor.stat().st_mode) == 0o600


def test_nothing_shipped_holds_a_prompt_an_answer_or_a_key(
    proxy: Proxy, collector: TcpCollector, siem_home: Path, user_key: str
) -> None:
    send_requests(proxy, user_key, 1)
    wait_for(
        lambda: len(leaf_messages(collector.frames)) == len(proxy.store().leaves()), "the collector"
    )

    shipped = bytes(collector.raw) + (siem_home / "export" / "audit.jsonl").read_bytes()
    for secret in (PROMPT_MARK, SERVICE_KEY, user_key, '"text": "hello"', '"text":"hello"'):
        assert secret.encode() not in shipped
    assert PROMPT_MARK not in proxy.log()


def test_a_restart_resumes_from_the_cursor(upstream: FakeUpstream, siem_home: Path) -> None:
    # A collector nobody listens on: every leaf of this run stays pending across the restart.
    offline = TcpCollector()
    first = start_siem_proxy(upstream, siem_home / "restart", f"tcp://127.0.0.1:{offline.port}")
    try:
        bob = first.keys().create("bob")
        send_requests(first, bob, 3)

        def settled() -> bool:
            status = siem_status(first)
            return status["jsonl"]["shipped"] == 6 and status["syslog"]["pending"] == 6

        wait_for(settled, "6 leaves in the JSONL file and 6 pending for syslog")
        assert siem_status(first)["syslog"]["shipped"] == 0
    finally:
        stop_proxy(first)
    assert "leaves pending (shipped on restart)" in first.log()
    assert not (siem_home / "restart" / "data" / "siem-syslog.cursor").exists()

    offline.start()
    second = start_siem_proxy(upstream, siem_home / "restart", f"tcp://127.0.0.1:{offline.port}")
    try:
        send_requests(second, bob, 1)
        wait_for(
            lambda: len(leaf_messages(offline.frames)) >= 8, "the pending leaves and the new ones"
        )
        assert [int(parsed(f)["seq"]) for f in leaf_messages(offline.frames)] == list(range(8))
        cursor = siem_home / "restart" / "data" / "siem-syslog.cursor"
        # The cursor moves once the collector has the batch, so it may trail by a moment.
        wait_for(
            lambda: cursor.exists() and json.loads(cursor.read_text())["next_seq"] == 8, "cursor"
        )
        jsonl = siem_home / "restart" / "export" / "audit.jsonl"
        wait_for(lambda: len(leaf_lines(jsonl)) == 8, "8 leaves in JSON lines")
        assert [line["seq"] for line in leaf_lines(jsonl)] == list(range(8))
    finally:
        stop_proxy(second)
        offline.stop()


def test_udp_syslog_gets_one_datagram_per_record(upstream: FakeUpstream, tmp_path: Path) -> None:
    collector = UdpCollector()
    udp_proxy = start_siem_proxy(upstream, tmp_path, f"udp://127.0.0.1:{collector.port}")
    try:
        key = udp_proxy.keys().create("dave")
        send_requests(udp_proxy, key, 2)
        wait_for(lambda: len(leaf_messages(collector.datagrams)) >= 4, "4 datagrams")
        matches = [parsed(d) for d in leaf_messages(collector.datagrams)]
        assert [int(m["seq"]) for m in matches] == [0, 1, 2, 3]
        assert [m["kind"] for m in matches] == [b"request", b"outcome"] * 2
    finally:
        stop_proxy(udp_proxy)
        collector.stop()


@pytest.mark.parametrize(
    "url", ["http://siem:514", "tcp://siem", "udp://:514", "tcp://siem:notaport", "siem:514"]
)
def test_a_bad_syslog_url_is_refused_with_the_setting_named(url: str) -> None:
    with pytest.raises(SiemConfigError, match="siem_syslog_url"):
        parse_syslog_url(url)


def test_the_proxy_refuses_to_start_with_a_bad_syslog_url(tmp_path: Path) -> None:
    proxy = start_proxy(
        "http://127.0.0.1:9",
        tmp_path / "home",
        tmp_path / "log",
        "--siem-syslog",
        "syslog.internal:514",
        wait=False,
    )
    assert proxy.process.wait(20) == 2
    assert "siem_syslog_url" in proxy.log() and "tls://HOST:PORT" in proxy.log()
