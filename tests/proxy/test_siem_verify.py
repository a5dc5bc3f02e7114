"""A SIEM's copy of the audit log verifies offline: the export ships signed checkpoints after the
leaves they cover, and `bastion audit verify --siem` checks the copy against the pinned key."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from audit_proxy.checkpoints import Signer, read_public_key
from audit_proxy.verify import Report
from audit_proxy.verify_siem import verify_siem_copy
from tests.audit.cli import bastion

from .conftest import stop_proxy
from .fake_upstream import FakeUpstream
from .test_siem import TcpCollector, send_requests, start_siem_proxy

REQUESTS = 3


@dataclass(frozen=True)
class Copy:
    """What the SIEM got from one proxy run: its JSONL lines, syslog messages, and the key."""

    lines: list[str]
    syslog: list[bytes]
    public_key: Path


@pytest.fixture(scope="module")
def copy(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Copy]:
    home = tmp_path_factory.mktemp("siem-copy")
    collector = TcpCollector().start()
    proxy = start_siem_proxy(upstream, home, f"tcp://127.0.0.1:{collector.port}")
    try:
        send_requests(proxy, proxy.keys().create("grace"), REQUESTS)
    finally:
        stop_proxy(proxy)  # signs a checkpoint over everything, and ships it
    collector.stop()
    public_key = home / "log.pem"
    printed = bastion("audit", "public-key", "--data-dir", str(home / "data"))
    assert printed.returncode == 0, printed.stderr
    public_key.write_text(printed.stdout)
    lines = (home / "export" / "audit.jsonl").read_text().splitlines()
    yield Copy(lines, list(collector.frames), public_key)


def check(lines: list[str], copy: Copy) -> Report:
    return verify_siem_copy(lines, read_public_key(copy.public_key))


def test_the_siem_gets_a_signed_checkpoint_over_every_leaf_and_the_copy_verifies(
    copy: Copy, tmp_path: Path
) -> None:
    docs = [json.loads(line) for line in copy.lines]
    assert [d["type"] for d in docs] == ["leaf"] * 2 * REQUESTS + ["checkpoint"]
    assert docs[-1]["size"] == 2 * REQUESTS
    # Syslog got the same checkpoint, its JSON as the message.
    heads = [m for m in copy.syslog if m.split(b" ", 6)[5] == b"checkpoint"]
    assert len(heads) == 1
    assert json.loads(heads[0].split(b"\xef\xbb\xbf", 1)[1])["root"] == docs[-1]["root"]

    siem_file = tmp_path / "siem.jsonl"
    siem_file.write_text("\n".join(copy.lines) + "\n")
    done = bastion(
        "audit", "verify", str(siem_file), "--siem", "--public-key", str(copy.public_key)
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"OK: {2 * REQUESTS} records, 1 checkpoints (signed through size 6)" in done.stdout


def test_repeated_and_shuffled_lines_still_verify(copy: Copy) -> None:
    # Delivery is at-least-once, and a SIEM may hand its events back in any order.
    lines = copy.lines + copy.lines[1:4]
    random.Random(7).shuffle(lines)

    report = check(lines, copy)

    assert report.ok, [str(p) for p in report.problems]
    assert (report.records, report.signed_size) == (2 * REQUESTS, 2 * REQUESTS)


def _edited_record(lines: list[str], seq: int) -> list[str]:
    doc = json.loads(lines[seq])
    doc["leaf"]["record"]["user"] = "mallory"
    return [*lines[:seq], json.dumps(doc), *lines[seq + 1 :]]


def _forged_checkpoint(lines: list[str], forger: Signer) -> list[str]:
    doc = json.loads(lines[-1])
    doc["signature"] = forger.sign(doc["size"], bytes.fromhex(doc["root"])).signature
    return [*lines[:-1], json.dumps(doc)]


@pytest.mark.parametrize(
    ("case", "first_bad"),
    [("a record edited", "record seq 2"), ("a leaf missing", "record seq 3"),
     ("two different lines for one seq", "record seq 2"), ("a forged checkpoint", "record seq 0"),
     ("no checkpoint", "record seq 0")],
)  # fmt: skip
def test_an_altered_copy_fails_naming_the_first_bad_record(
    copy: Copy, case: str, first_bad: str, tmp_path: Path
) -> None:
    lines = {
        "a record edited": lambda: _edited_record(copy.lines, 2),
        "a leaf missing": lambda: [*copy.lines[:3], *copy.lines[4:]],
        "two different lines for one seq": lambda: [*copy.lines, _edited_record(copy.lines, 2)[2]],
        "a forged checkpoint": lambda: _forged_checkpoint(
            copy.lines, Signer.load_or_create(tmp_path)
        ),
        "no checkpoint": lambda: copy.lines[:-1],
    }[case]()

    first = check(lines, copy).first_problem()

    assert first is not None
    assert str(first).startswith(first_bad), str(first)


def test_a_copy_of_another_log_fails(copy: Copy, tmp_path: Path) -> None:
    other = Signer.load_or_create(tmp_path)

    report = verify_siem_copy(copy.lines, other.log_public_key)

    assert not report.ok


def test_verify_siem_asks_for_the_pinned_key(copy: Copy, tmp_path: Path) -> None:
    siem_file = tmp_path / "siem.jsonl"
    siem_file.write_text("\n".join(copy.lines))

    done = bastion("audit", "verify", str(siem_file), "--siem")

    assert done.returncode == 2
    assert "give --public-key FILE" in done.stderr
