"""`bastion audit siem-resend --from SEQ`: a sink ships the log again from SEQ, with the signed
checkpoints over it, so a collector that lost records gets them back without the whole log, and
a SIEM copy with a gap verifies again."""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from audit_proxy.checkpoints import Signer
from audit_proxy.export import AUDIT_DB
from audit_proxy.siem import FileCursors, JsonlSink, SiemForwarder
from audit_proxy.store import AuditStore
from audit_proxy.verify_siem import verify_siem_copy
from tests.audit.cli import bastion
from tests.audit.records import record_pair

from .conftest import stop_proxy
from .fake_upstream import FakeUpstream
from .pki import Authority
from .rsyslog import RsyslogCollector
from .test_siem import (
    leaf_lines,
    leaf_messages,
    parsed,
    send_requests,
    siem_status,
    start_siem_proxy,
    wait_for,
)

PAIRS = 4


class Shipping:
    """A SQLite audit log in a data dir, shipped to a JSONL sink by a forwarder run by hand."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.signer = Signer.load_or_create(data_dir)
        self.store = AuditStore(data_dir / AUDIT_DB, self.signer)
        self.sink = JsonlSink(data_dir.parent / "siem.jsonl")
        self.cursors = FileCursors(data_dir, self.signer.log_id)
        self.forwarder = SiemForwarder(self.store, [self.sink], self.cursors, self.signer.log_id)

    def lines(self) -> list[str]:
        return self.sink.path.read_text().splitlines()

    def close(self) -> None:
        self.forwarder.stop()
        self.store.close()


@pytest.fixture
def shipping(tmp_path: Path) -> Iterator[Shipping]:
    shipped = Shipping(tmp_path / "data")
    for _ in range(PAIRS):
        record_pair(shipped.store)
    shipped.store.checkpoint()
    shipped.forwarder.run_once()
    yield shipped
    shipped.close()


def seqs(lines: list[str]) -> list[int]:
    return [doc["seq"] for doc in map(json.loads, lines) if doc["type"] == "leaf"]


def resend(data_dir: Path, *args: str) -> str:
    done = bastion("audit", "siem-resend", *args, "--data-dir", str(data_dir))
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_copy_with_a_gap_verifies_again_once_the_gap_is_shipped_again(
    shipping: Shipping,
) -> None:
    shipped = shipping.lines()
    assert seqs(shipped) == list(range(2 * PAIRS))
    # The SIEM lost records 3 to 5 (a collector that crashed holding them, say).
    kept = [line for line in shipped if json.loads(line).get("seq") not in (3, 4, 5)]
    copy = shipping.data_dir.parent / "siem-copy.jsonl"
    copy.write_text("\n".join(kept) + "\n")
    public_key = shipping.data_dir.parent / "log.pub"
    public_key.write_text(shipping.signer.log_public_key.hex())
    gap = bastion("audit", "verify", str(copy), "--siem", "--public-key", str(public_key))
    assert gap.returncode == 1
    assert "FAILED: record seq 3: missing" in gap.stdout
    assert "`bastion audit siem-resend --from 3` on the proxy's side" in gap.stdout

    said = resend(shipping.data_dir, "--from", "3")
    assert "from seq 3" in said
    shipping.forwarder.run_once()

    again = shipping.lines()[len(shipped) :]
    assert seqs(again) == list(range(3, 2 * PAIRS))
    assert [json.loads(line)["size"] for line in again if '"checkpoint"' in line] == [2 * PAIRS]
    report = verify_siem_copy(kept + again, shipping.signer.log_public_key)
    assert report.ok, [str(p) for p in report.problems]
    assert report.signed_size == 2 * PAIRS
    # The request is taken once; the cursor is where it was before.
    shipping.forwarder.run_once()
    assert len(shipping.lines()) == len(shipped) + len(again)
    assert not list(shipping.data_dir.glob("*.resend*"))
    assert shipping.cursors.load("jsonl") == 2 * PAIRS


def test_a_resend_the_cursors_could_not_take_is_carried_out_at_the_next_pass(
    shipping: Shipping,
) -> None:
    shipped = shipping.lines()
    resend(shipping.data_dir, "--from", "6")
    # The checkpoint cursor cannot be written (a directory is in its place).
    blocked = shipping.data_dir / "siem-jsonl.checkpoints.cursor"
    blocked.unlink()
    blocked.mkdir()
    with pytest.raises(ValueError, match="unreadable SIEM cursor"):
        shipping.forwarder.run_once()
    assert shipping.lines() == shipped
    blocked.rmdir()
    shipping.forwarder.run_once()
    assert seqs(shipping.lines()[len(shipped) :]) == [6, 7]
    assert not list(shipping.data_dir.glob("*.resend*"))


def test_only_the_sink_named_ships_again(shipping: Shipping) -> None:
    said = resend(shipping.data_dir, "--from", "0", "--sink", "syslog")
    assert "note: the config names no SIEM sink" in said
    before = shipping.lines()
    shipping.forwarder.run_once()
    assert shipping.lines() == before


def test_all_means_the_sinks_the_config_ships_to(shipping: Shipping, tmp_path: Path) -> None:
    config = tmp_path / "proxy.toml"
    config.write_text(f'siem_jsonl_path = "{shipping.sink.path}"\n')
    said = resend(shipping.data_dir, "--from", "1", "--config", str(config))
    assert "SIEM export (jsonl)" in said
    assert "note:" not in said
    assert [p.name for p in shipping.data_dir.glob("*.resend")] == ["siem-jsonl.resend"]


def test_a_resend_from_past_what_was_shipped_changes_nothing(
    shipping: Shipping, caplog: pytest.LogCaptureFixture
) -> None:
    record_pair(shipping.store)  # seq 8 and 9: in the log, not shipped yet
    shipping.cursors.ask_resend(["jsonl"], 9)
    with caplog.at_level(logging.INFO, "bastion.proxy.siem"):
        shipping.forwarder.run_once()
    assert "it has shipped up to seq 7 only; nothing to resend" in caplog.text
    assert seqs(shipping.lines()) == list(range(2 * PAIRS + 2))


def test_requests_wait_in_private_files_and_the_earliest_wins(tmp_path: Path) -> None:
    cursors = FileCursors(tmp_path, "log-a")
    cursors.ask_resend(["jsonl", "syslog"], 40)
    cursors.ask_resend(["jsonl"], 7)
    cursors.ask_resend(["jsonl"], 12)
    request = tmp_path / "siem-jsonl.resend"
    assert stat.S_IMODE(os.stat(request).st_mode) == 0o600
    assert cursors.take_resend("jsonl") == 7
    assert cursors.take_resend("jsonl") == 7  # until it is carried out
    cursors.ask_resend(["jsonl"], 2)  # asked meanwhile: the next one
    cursors.forget_resend("jsonl", 7)
    assert cursors.take_resend("jsonl") == 2
    cursors.forget_resend("jsonl", 2)
    assert cursors.take_resend("jsonl") is None
    assert cursors.take_resend("syslog") == 40
    # A request made of another log's data dir is not this log's.
    cursors.forget_resend("syslog", 40)
    FileCursors(tmp_path, "log-b").ask_resend(["jsonl"], 3)
    assert cursors.take_resend("jsonl") is None
    assert not list(tmp_path.iterdir())


def test_an_unreadable_request_is_reported_and_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cursors = FileCursors(tmp_path, "log-a")
    (tmp_path / "siem-jsonl.resend").write_text("{not json")
    with caplog.at_level(logging.ERROR, "bastion.proxy.siem"):
        assert cursors.take_resend("jsonl") is None
    assert "siem-jsonl.resend: unreadable SIEM resend request" in caplog.text
    assert "ask again with `bastion audit siem-resend`" in caplog.text
    assert not list(tmp_path.iterdir())
    # Asking again replaces an unreadable request.
    (tmp_path / "siem-jsonl.resend").write_text("[]")
    cursors.ask_resend(["jsonl"], 5)
    assert cursors.take_resend("jsonl") == 5


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--from", "99"], "the log has no record seq 99 yet"),
     (["--from", "-1"], "'-1' is not a record seq"),
     (["--from", "2", "--sink", "splunk"], "invalid choice: 'splunk'")],
)  # fmt: skip
def test_a_bad_resend_is_refused_saying_why(
    shipping: Shipping, args: list[str], message: str
) -> None:
    done = bastion("audit", "siem-resend", *args, "--data-dir", str(shipping.data_dir))
    assert done.returncode != 0
    assert message in done.stderr
    assert not list(shipping.data_dir.glob("*.resend"))


def test_a_data_dir_without_a_log_is_named(tmp_path: Path) -> None:
    done = bastion("audit", "siem-resend", "--from", "0", "--data-dir", str(tmp_path))
    assert done.returncode == 1
    assert str(tmp_path) in done.stderr


def test_records_a_tcp_collector_lost_in_a_crash_reach_it_on_request(
    upstream: FakeUpstream, tmp_path: Path, authority: Authority
) -> None:
    collector = RsyslogCollector(tmp_path / "rsyslog", authority, protocol="tcp").start()
    home = tmp_path / "home"
    proxy = start_siem_proxy(upstream, home, f"tcp://127.0.0.1:{collector.port}")

    def at_collector() -> list[int]:
        return sorted({int(parsed(m)["seq"]) for m in leaf_messages(collector.messages())})

    try:
        key = proxy.keys().create("judy")
        send_requests(proxy, key, 1)
        wait_for(lambda: at_collector() == [0, 1], "the first 2 leaves")
        # Frozen, the collector's kernel takes the bytes: over TCP that counts as shipped.
        collector.pause()
        send_requests(proxy, key, 2)
        wait_for(lambda: siem_status(proxy)["syslog"]["shipped"] == 6, "4 more leaves 'shipped'")
        collector.kill()  # and what it held unprocessed dies with it
        collector.start()
        send_requests(proxy, key, 1)
        wait_for(lambda: at_collector() == [0, 1, 6, 7], "the leaves after the crash")

        said = resend(home / "data", "--from", "2", "--sink", "syslog")
        assert "a running proxy starts within a second" in said
        wait_for(lambda: at_collector() == list(range(8)), "the 4 lost leaves, sent again")
    finally:
        stop_proxy(proxy)
        collector.stop()
    assert "SIEM syslog tcp://" in proxy.log()
    assert "shipping again from seq 2, as asked (6 leaves it had already" in proxy.log()
    # The JSONL sink was not asked: each leaf once.
    assert [line["seq"] for line in leaf_lines(home / "export" / "audit.jsonl")] == list(range(8))
