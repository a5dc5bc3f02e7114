"""SIEM export over RELP to a real rsyslogd: a batch counts as shipped only once the collector
has acknowledged every message in it, so a collector that dies holding unprocessed records
loses none of them (syslog over TCP or TLS counts what its own kernel took)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import stop_proxy
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


def seqs(collector: RsyslogCollector) -> list[int]:
    return [int(parsed(m)["seq"]) for m in leaf_messages(collector.messages())]


def checkpoints(collector: RsyslogCollector) -> list[bytes]:
    return [m for m in collector.messages() if m.split(b" ", 6)[5] == b"checkpoint"]


@pytest.mark.parametrize("protocol", ["relp", "relp+tls"])
def test_every_leaf_and_its_checkpoint_reach_rsyslog_over_relp(
    protocol: Protocol,
    upstream: FakeUpstream,
    tmp_path: Path,
    authority: Authority,
    proxy_cert: Issued,
) -> None:
    collector = RsyslogCollector(tmp_path / "rsyslog", authority, protocol=protocol).start()
    tls = siem_tls_args(authority.cert, proxy_cert) if protocol == "relp+tls" else []
    try:
        url = f"{protocol}://127.0.0.1:{collector.port}"
        proxy = start_siem_proxy(upstream, tmp_path / "home", url, *tls)
        try:
            send_requests(proxy, proxy.keys().create("heidi"), 3)
            wait_for(lambda: seqs(collector) == list(range(6)), "6 leaves at rsyslog")
        finally:
            stop_proxy(proxy)
        wait_for(lambda: len(checkpoints(collector)) == 1, "the checkpoint signed at the stop")
        assert b'size="6"' in checkpoints(collector)[0]
    finally:
        collector.stop()


def test_records_a_collector_took_but_never_acknowledged_are_sent_again(
    upstream: FakeUpstream, tmp_path: Path, authority: Authority
) -> None:
    collector = RsyslogCollector(tmp_path / "rsyslog", authority, protocol="relp").start()
    url = f"relp://127.0.0.1:{collector.port}"
    proxy = start_siem_proxy(upstream, tmp_path / "home", url)
    try:
        key = proxy.keys().create("ivan")
        send_requests(proxy, key, 1)
        wait_for(lambda: seqs(collector) == [0, 1], "the first 2 leaves")

        # Frozen, the collector's kernel still takes the bytes, but nothing is acknowledged.
        collector.pause()
        send_requests(proxy, key, 2)
        wait_for(
            lambda: siem_status(proxy)["syslog"]["failures"] >= 1,
            "a batch left unacknowledged",
        )
        assert siem_status(proxy)["syslog"]["pending"] == 4
        collector.kill()  # what it held unprocessed dies with it

        collector.start()
        wait_for(lambda: sorted(set(seqs(collector))) == list(range(6)), "all 6 leaves", 30)
        wait_for(lambda: siem_status(proxy)["syslog"]["pending"] == 0, "nothing pending", 30)
    finally:
        stop_proxy(proxy)
        collector.stop()
    assert "commands within 5 s; the rest are sent again" in proxy.log()
