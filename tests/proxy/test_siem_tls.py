"""SIEM export over syslog-over-TLS (RFC 5425) to a real rsyslogd that checks certificates."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from audit_proxy.siem import (
    SiemConfigError,
    SyslogSink,
    SyslogTls,
    build_forwarder,
    parse_syslog_url,
    syslog_tls_context,
)

from .conftest import Proxy, start_proxy, stop_proxy
from .fake_upstream import FakeUpstream
from .pki import Authority, Issued
from .rsyslog import Protocol, RsyslogCollector
from .test_siem import (
    leaf_messages,
    parsed,
    send_requests,
    siem_status,
    siem_tls_args,
    start_siem_proxy,
    wait_for,
)


@pytest.fixture(scope="module")
def stranger_cert(tmp_path_factory: pytest.TempPathFactory) -> Issued:
    stranger = Authority.create(tmp_path_factory.mktemp("stranger-pki") / "ca", "Stranger CA")
    return stranger.issue("stranger", server=False)


@pytest.fixture
def collector(tmp_path: Path, authority: Authority) -> Iterator[RsyslogCollector]:
    running = RsyslogCollector(tmp_path / "rsyslog", authority, client_certs=True).start()
    yield running
    running.stop()


def start_tls_siem_proxy(
    upstream: FakeUpstream, home: Path, collector: RsyslogCollector, *tls: str
) -> Proxy:
    return start_siem_proxy(upstream, home, f"tls://127.0.0.1:{collector.port}", *tls)


def test_every_leaf_reaches_rsyslog_over_mutual_tls(
    upstream: FakeUpstream,
    tmp_path: Path,
    collector: RsyslogCollector,
    authority: Authority,
    proxy_cert: Issued,
) -> None:
    proxy = start_tls_siem_proxy(
        upstream, tmp_path / "home", collector, *siem_tls_args(authority.cert, proxy_cert)
    )
    try:
        key = proxy.keys().create("erin")
        send_requests(proxy, key, 3)
        wait_for(lambda: len(leaf_messages(collector.messages())) >= 6, "6 messages at rsyslog")

        leaves = proxy.store().leaves()
        messages = [parsed(message) for message in leaf_messages(collector.messages())]
        assert [int(m["seq"]) for m in messages] == [seq for seq, *_ in leaves] == list(range(6))
        assert [m["msg"] for m in messages] == [canonical for *_, canonical in leaves]
        assert siem_status(proxy)["syslog"] == {
            "pending": 0, "shipped": 6, "failures": 0, "leading": 1,
        }  # fmt: skip
    finally:
        stop_proxy(proxy)


@pytest.mark.parametrize("case", ["collector not trusted", "proxy's certificate refused"])
def test_a_failed_tls_check_ships_nothing_loses_nothing_and_says_which_setting(
    case: str,
    upstream: FakeUpstream,
    tmp_path: Path,
    collector: RsyslogCollector,
    authority: Authority,
    proxy_cert: Issued,
    stranger_cert: Issued,
) -> None:
    wrong, setting = {
        # Without the private CA, the collector's certificate verifies against nothing.
        "collector not trusted": (siem_tls_args(None, proxy_cert), "siem_syslog_ca_file"),
        # TLS 1.3: the collector refuses a certificate only after the handshake, on our side.
        "proxy's certificate refused": (
            siem_tls_args(authority.cert, stranger_cert),
            "siem_syslog_certfile",
        ),
    }[case]
    home = tmp_path / "home"
    proxy = start_tls_siem_proxy(upstream, home, collector, *wrong)
    try:
        key = proxy.keys().create("frank")
        send_requests(proxy, key, 2)
        wait_for(
            lambda: siem_status(proxy)["syslog"]["failures"] >= 2,
            "two failed attempts to ship",
        )
        assert siem_status(proxy)["syslog"]["pending"] == 4
        assert siem_status(proxy)["syslog"]["shipped"] == 0
    finally:
        stop_proxy(proxy)
    assert setting in proxy.log()
    assert collector.messages() == []
    assert not (home / "data" / "siem-syslog.cursor").exists()

    # Set right, the same proxy ships everything, from the first leaf.
    fixed = start_tls_siem_proxy(
        upstream, home, collector, *siem_tls_args(authority.cert, proxy_cert)
    )
    try:
        wait_for(lambda: len(leaf_messages(collector.messages())) >= 4, "the 4 pending leaves")
        assert [int(parsed(m)["seq"]) for m in leaf_messages(collector.messages())] == [0, 1, 2, 3]
        cursor = home / "data" / "siem-syslog.cursor"
        wait_for(lambda: cursor.exists() and json.loads(cursor.read_text())["next_seq"] == 4, "")
    finally:
        stop_proxy(fixed)


@pytest.mark.parametrize("protocol", ["tls", "relp+tls"])
def test_a_tls_sink_keeps_one_connection_across_batches(
    protocol: Protocol, tmp_path: Path, authority: Authority
) -> None:
    # A collector that asks for no certificate, as many SIEMs are set up.
    collector = RsyslogCollector(
        tmp_path / "anon", authority, client_certs=False, protocol=protocol
    ).start()
    try:
        target = parse_syslog_url(f"{protocol}://127.0.0.1:{collector.port}")
        sink = SyslogSink(target, syslog_tls_context(SyslogTls(ca_file=authority.cert)))
        leaf = (0, "request", "0" * 32, b"\x00" * 32, b'{"record":{}}')
        started = time.monotonic()
        for seq in range(3):
            sink.ship([(seq, *leaf[1:])], "log-1")
            time.sleep(0.2)  # the collector's session tickets arrive in between
        sink.close()
        wait_for(lambda: len(leaf_messages(collector.messages())) == 3, "3 messages")
        assert sink.connects == 1
        assert time.monotonic() - started < 3
        assert [int(parsed(m)["seq"]) for m in leaf_messages(collector.messages())] == [0, 1, 2]
    finally:
        collector.stop()


def test_tls_files_are_checked_before_the_proxy_starts(tmp_path: Path) -> None:
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate\n")
    cases: list[tuple[str | None, SyslogTls, str]] = [
        ("tcp://siem:601", SyslogTls(ca_file=not_pem), "siem_syslog_ca_file set, but "
         "siem_syslog_url is tcp://siem:601"),
        (None, SyslogTls(certfile=not_pem, keyfile=not_pem), "siem_syslog_url is not set"),
        ("tls://siem:6514", SyslogTls(certfile=not_pem), "siem_syslog_certfile is set but "
         "siem_syslog_keyfile is not"),
        ("tls://siem:6514", SyslogTls(ca_file=tmp_path / "missing.pem"),
         "siem_syslog_ca_file: cannot read"),
        ("tls://siem:6514", SyslogTls(ca_file=not_pem), "siem_syslog_ca_file .* not a PEM"),
        ("tls://siem:6514", SyslogTls(certfile=not_pem, keyfile=not_pem),
         "siem_syslog_certfile .* not a usable PEM"),
    ]  # fmt: skip
    for url, tls, message in cases:
        with pytest.raises(SiemConfigError, match=message):
            build_forwarder(_NoLeaves(), tmp_path, None, None, url, syslog_tls=tls)


def test_the_proxy_refuses_to_start_with_tls_files_for_a_plain_collector(tmp_path: Path) -> None:
    proxy = start_proxy(
        "http://127.0.0.1:9", tmp_path / "home", tmp_path / "log",
        "--siem-syslog", "tcp://127.0.0.1:601", "--siem-syslog-ca-file", str(tmp_path),
        wait=False,
    )  # fmt: skip
    assert proxy.process.wait(20) == 2
    assert "siem_syslog_ca_file set, but siem_syslog_url is tcp://127.0.0.1:601" in proxy.log()


class _NoLeaves:
    def leaves_from(self, seq: int, limit: int = 1000) -> list[tuple[int, str, str, bytes, bytes]]:
        return []
