"""Rotating the log's signing key: the log keeps its id and pinned key, the chain verifies, and a
retired key can neither sign on nor be slipped past the verifier."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest

from audit_proxy import export, verify
from audit_proxy.auth import PRINCIPAL
from audit_proxy.checkpoints import (
    KEY_FILE,
    LOG_KEY_FILE,
    PUBLIC_KEY_FILE,
    RETIRED_KEYS_FILE,
    Signer,
)
from audit_proxy.key_rotation import RotateKeyRoute
from audit_proxy.keys import Principal
from audit_proxy.merkle import Frontier
from audit_proxy.siem import FileCursors, JsonlSink, SiemForwarder
from audit_proxy.store import AuditStore, AuditStoreUnavailable
from audit_proxy.verify_siem import verify_siem_copy

from .cli import bastion
from .records import record_pair

Entries = list[dict[str, Any]]
PAIRS_BEFORE = 3
PAIRS_AFTER = 3


def write_pairs(data_dir: Path, pairs: int, start: int) -> None:
    store = AuditStore(data_dir / "audit.sqlite3", Signer.load_or_create(data_dir), 4)
    for i in range(start, start + pairs):
        record_pair(store, json.dumps({"prompt": f"def f{i}():"}).encode())
    store.close()


@pytest.fixture(scope="module")
def rotated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Signer, str]:
    """A log whose first 6 records the first key signed and whose next 6 the second one did;
    returns the data dir, the retired signer (which a thief might hold) and its PEM."""
    data_dir = tmp_path_factory.mktemp("rotated")
    write_pairs(data_dir, PAIRS_BEFORE, 0)
    first = Signer.load(data_dir)
    first_pem = (data_dir / KEY_FILE).read_text()
    done = bastion("audit", "rotate-key", "--data-dir", str(data_dir))
    assert done.returncode == 0, done.stderr
    assert f"retired at size {2 * PAIRS_BEFORE}" in done.stdout
    assert "6 payload keys wrapped anew" in done.stdout
    write_pairs(data_dir, PAIRS_AFTER, PAIRS_BEFORE)
    return data_dir, first, first_pem


@pytest.fixture(scope="module")
def entries(rotated: tuple[Path, Signer, str]) -> Entries:
    out = io.StringIO()
    export.export_log(rotated[0], out)
    return [json.loads(line) for line in out.getvalue().splitlines()]


def check(entries: Entries, pinned: bytes | None = None) -> verify.Report:
    return verify.verify_export([json.dumps(e) for e in entries], pinned)


def of_type(entries: Entries, kind: str) -> Entries:
    return [e for e in entries if e["type"] == kind]


def test_the_log_keeps_its_id_and_pinned_key(
    rotated: tuple[Path, Signer, str], entries: Entries
) -> None:
    data_dir, first, _ = rotated
    current = Signer.load(data_dir)
    assert current.key_id != first.key_id
    assert current.log_id == first.log_id == first.key_id
    header = entries[0]
    assert header["public_key"] == first.public_key.hex()
    assert header["log_id"] == first.log_id
    # The public key auditors pinned before the rotation still verifies the whole log.
    pinned = data_dir / PUBLIC_KEY_FILE
    assert Signer.load(data_dir).public_key_pem() == pinned.read_text()
    out = data_dir.parent / "rotated-export.jsonl"
    out.write_text("\n".join(json.dumps(e) for e in entries) + "\n")
    done = bastion("audit", "verify", str(out), "--public-key", str(pinned), "--strict")
    assert done.returncode == 0, done.stdout + done.stderr


def test_an_untouched_rotated_export_verifies(
    rotated: tuple[Path, Signer, str], entries: Entries
) -> None:
    report = check(entries, rotated[1].public_key)
    assert report.ok, report.problems
    assert report.key_transitions == 1
    assert (report.records, report.signed_size) == (12, 12)
    # Payloads sealed before the rotation still open: their keys were wrapped anew.
    assert report.payloads_checked == 12
    (transition,) = of_type(entries, "key_transition")
    assert transition["size"] == 2 * PAIRS_BEFORE
    signers = {c["size"]: c.get("key_id") for c in of_type(entries, "checkpoint")}
    current = Signer.load(rotated[0]).key_id
    assert signers == {4: None, 6: None, 10: current, 12: current}


def test_the_retired_private_key_is_gone_and_new_files_are_private(
    rotated: tuple[Path, Signer, str],
) -> None:
    data_dir, _, first_pem = rotated
    body = first_pem.splitlines()[1]
    for path in data_dir.iterdir():
        if path.is_file():
            assert body.encode() not in path.read_bytes(), path
    for name in (KEY_FILE, LOG_KEY_FILE, RETIRED_KEYS_FILE):
        assert stat.S_IMODE((data_dir / name).stat().st_mode) == 0o600, name
    assert not (data_dir / "audit-signing-key.next.pem").exists()


def test_every_stored_payload_key_is_wrapped_under_the_current_key(
    rotated: tuple[Path, Signer, str],
) -> None:
    data_dir = rotated[0]
    wrap = Signer.load(data_dir).key_wrap()
    conn = sqlite3.connect(data_dir / "audit.sqlite3")
    keys = [bytes(k) for (k,) in conn.execute("SELECT key FROM payload_keys")]
    conn.close()
    assert len(keys) == 12
    assert all(wrap.wrapped_by_current(k) for k in keys)
    # The retired key's wrap alone no longer opens them.
    assert not any(rotated[1].key_wrap().wrapped_by_current(k) for k in keys)


def test_a_retired_key_cannot_sign_the_log_again(rotated: tuple[Path, Signer, str]) -> None:
    with pytest.raises(AuditStoreUnavailable, match=r"rotated out .* at size 6"):
        AuditStore(rotated[0] / "audit.sqlite3", rotated[1])


def test_a_checkpoint_the_retired_key_signs_past_its_retirement_fails(
    rotated: tuple[Path, Signer, str], entries: Entries
) -> None:
    thief = rotated[1]
    forged = [dict(e) for e in entries]
    last = forged[-1]
    leaves = [bytes.fromhex(e["leaf_hash"]) for e in of_type(entries, "leaf")]
    frontier = Frontier()
    for digest in leaves:
        frontier.append(digest)
    signed = thief.sign(12, frontier.root()).as_dict()
    forged[-1] = {**signed, "type": "checkpoint", "consistency_from": 8,
                  "consistency": last["consistency"]}  # fmt: skip
    report = check(forged)
    assert not report.ok
    assert "after it was rotated out at size 6" in str(report.first_problem())


def test_a_forged_transition_to_the_thiefs_key_fails(
    rotated: tuple[Path, Signer, str], entries: Entries
) -> None:
    thief_key = Signer.generate(rotated[1].log_public_key)
    forged = [dict(e) for e in entries]
    index = next(i for i, e in enumerate(forged) if e["type"] == "key_transition")
    transition = forged[index]
    made = rotated[1].hand_over(thief_key, transition["size"], bytes.fromhex(transition["root"]))
    # The retired key signs the hand-over to the thief: the log already moved on from it.
    forged.insert(index + 1, {"type": "key_transition", **made.as_dict()})
    report = check(forged)
    assert not report.ok
    assert "not from the current key" in str(report.problems)


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        (lambda t: t.update(to_signature="00" * 64), "incoming key's signature is not valid"),
        (lambda t: t.update(from_signature="00" * 64), "outgoing key's signature is not valid"),
        (lambda t: t.update(size=4), "outgoing key's signature is not valid"),
        (lambda t: t.update(log_id="ab" * 32), "belongs to another log"),
    ],
)
def test_a_tampered_transition_fails_and_later_keys_are_refused(
    entries: Entries, tamper: Any, expected: str
) -> None:
    forged = [dict(e) for e in entries]
    transition = next(e for e in forged if e["type"] == "key_transition")
    tamper(transition)
    report = check(forged)
    assert not report.ok
    messages = [str(p) for p in report.problems]
    assert any(expected in m for m in messages), messages
    assert any("no valid key transition introduces" in m for m in messages), messages
    assert report.signed_size == 2 * PAIRS_BEFORE


def test_a_transition_both_keys_sign_over_a_wrong_root_fails(
    rotated: tuple[Path, Signer, str], entries: Entries
) -> None:
    current = Signer.load(rotated[0])
    forged = [e for e in entries if e["type"] != "key_transition"]
    wrong = rotated[1].hand_over(current, 6, b"\x11" * 32)
    forged.insert(-4, {"type": "key_transition", **wrong.as_dict()})
    report = check(forged)
    assert not report.ok
    assert "its root is not that of the records before seq 6" in str(report.problems)


def test_dropping_the_transition_leaves_the_new_keys_checkpoints_unverified(
    entries: Entries,
) -> None:
    report = check([e for e in entries if e["type"] != "key_transition"])
    assert not report.ok
    assert report.signed_size == 6
    assert report.first_problem() is not None
    assert report.first_problem().seq == 6  # type: ignore[union-attr]


def test_proofs_across_the_rotation_verify_against_the_pinned_key(
    rotated: tuple[Path, Signer, str],
) -> None:
    data_dir, first, _ = rotated
    proof = export.inclusion_proof(data_dir, 2)
    assert proof["checkpoint"]["key_id"] == Signer.load(data_dir).key_id
    assert verify.verify_proof(proof, first.public_key) is None
    consistency = export.consistency_proof(data_dir, 4, 12)
    assert verify.verify_proof(consistency, first.public_key) is None
    assert "no valid key transition" in str(verify.verify_proof({**proof, "key_transitions": []}))
    bad_chain = json.loads(json.dumps(proof))
    bad_chain["key_transitions"][0]["to_signature"] = "00" * 64
    assert "incoming key's signature" in str(verify.verify_proof(bad_chain))


def test_evidence_digests_are_given_under_every_key(rotated: tuple[Path, Signer, str]) -> None:
    data_dir, first, _ = rotated
    done = bastion("audit", "evidence-digest", "--data-dir", str(data_dir), stdin="hunter2\n")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2
    assert f"key {first.key_id[:16]}, retired" in lines[1]
    assert lines[0] != lines[1].split()[0]


def test_rotating_while_the_proxy_writes_is_refused(tmp_path: Path) -> None:
    write_pairs(tmp_path, 1, 0)
    running = AuditStore(tmp_path / "audit.sqlite3", Signer.load(tmp_path))
    running.claim_writer()
    try:
        done = bastion("audit", "rotate-key", "--data-dir", str(tmp_path))
    finally:
        running.close()
    assert done.returncode == 1
    assert "POST /v1/audit/rotate-key" in done.stderr and "or stop it" in done.stderr
    assert Signer.load(tmp_path).is_log_key
    assert not (tmp_path / "audit-signing-key.next.pem").exists()  # no key left waiting


def test_a_rotation_cut_short_is_finished_by_running_it_again(tmp_path: Path) -> None:
    """The store took the hand-over but the new key never became current (a crash)."""
    write_pairs(tmp_path, 2, 0)
    first = Signer.load(tmp_path)
    incoming = Signer.generate(first.log_public_key)
    incoming.write_to(tmp_path / "audit-signing-key.next.pem")
    store = AuditStore(tmp_path / "audit.sqlite3")
    store.rotate_signing_key(first, incoming)
    store.close()
    with pytest.raises(AuditStoreUnavailable, match="rotated out"):
        AuditStore(tmp_path / "audit.sqlite3", Signer.load(tmp_path))
    done = bastion("audit", "rotate-key", "--data-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert Signer.load(tmp_path).key_id == incoming.key_id
    write_pairs(tmp_path, 1, 2)
    out = io.StringIO()
    export.export_log(tmp_path, out)
    report = verify.verify_export(out.getvalue().splitlines(), first.public_key)
    assert report.ok, report.problems
    assert (report.key_transitions, report.records, report.payloads_checked) == (1, 6, 6)


def test_a_second_rotation_chains_from_the_first(tmp_path: Path) -> None:
    write_pairs(tmp_path, 1, 0)
    first = Signer.load(tmp_path)
    for round_ in range(2):
        done = bastion("audit", "rotate-key", "--data-dir", str(tmp_path))
        assert done.returncode == 0, done.stderr
        write_pairs(tmp_path, 1, round_ + 1)
    assert len(Signer.load(tmp_path).retired) == 2
    out = io.StringIO()
    export.export_log(tmp_path, out)
    report = verify.verify_export(out.getvalue().splitlines(), first.public_key)
    assert report.ok, report.problems
    assert (report.key_transitions, report.records, report.payloads_checked) == (2, 6, 6)


def test_a_rotation_must_start_from_the_current_key(rotated: tuple[Path, Signer, str]) -> None:
    data_dir, first, _ = rotated
    stranger = Signer.generate(first.log_public_key)
    store = AuditStore(data_dir / "audit.sqlite3")
    try:
        with pytest.raises(AuditStoreUnavailable, match="already rotated out"):
            store.rotate_signing_key(first, stranger)
        with pytest.raises(AuditStoreUnavailable, match="not the log's current one"):
            store.rotate_signing_key(stranger, Signer.generate(first.log_public_key))
        assert len(store.key_transitions()) == 1
    finally:
        store.close()


def test_only_the_current_key_of_this_log_may_sign_it(
    rotated: tuple[Path, Signer, str], tmp_path: Path
) -> None:
    path = rotated[0] / "audit.sqlite3"
    with pytest.raises(AuditStoreUnavailable, match="signed by another key"):
        AuditStore(path, Signer.load_or_create(tmp_path / "another-log"))
    # The current key without the log's own public key beside it names another log.
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / KEY_FILE).write_bytes((rotated[0] / KEY_FILE).read_bytes())
    with pytest.raises(AuditStoreUnavailable, match=r"audit-log-key\.pub"):
        AuditStore(path, Signer.load(lone))
    AuditStore(path, Signer.load(rotated[0])).close()


def test_a_payload_key_no_known_key_unwraps_is_left_as_it_is(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from audit_proxy.key_rotation import rotate_signing_key

    write_pairs(tmp_path, 2, 0)
    conn = sqlite3.connect(tmp_path / "audit.sqlite3")
    conn.execute("UPDATE payload_keys SET key = ? WHERE seq = 1", (b"\x01" + b"\x07" * 40,))
    conn.commit()
    with caplog.at_level(logging.WARNING, logger="bastion.proxy"):
        rotation = rotate_signing_key(tmp_path)
    assert rotation.rewrapped == 3
    assert "payload key 1 left as it is" in caplog.text
    (kept,) = conn.execute("SELECT key FROM payload_keys WHERE seq = 1").fetchone()
    conn.close()
    assert kept == b"\x01" + b"\x07" * 40


def test_the_admin_route_rotates_the_open_store_one_rotation_at_a_time(tmp_path: Path) -> None:
    write_pairs(tmp_path, 2, 0)
    store = AuditStore(tmp_path / "audit.sqlite3", Signer.load(tmp_path))
    store.claim_writer()  # as a running proxy holds it
    route = RotateKeyRoute(store, tmp_path)

    async def call(method: str) -> tuple[int, dict[str, Any]]:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        root = Principal(name="root", role="admin")
        scope = {"type": "http", "method": method, "path": "/v1/audit/rotate-key", PRINCIPAL: root}
        await route(scope, receive, send)
        return sent[0]["status"], json.loads(sent[1]["body"])

    async def while_one_runs() -> tuple[int, dict[str, Any]]:
        async with route._running:
            return await call("POST")

    assert asyncio.run(call("GET"))[0] == 405
    status, refused = asyncio.run(while_one_runs())
    assert status == 409 and "running" in refused["error"]["message"]
    status, done = asyncio.run(call("POST"))
    assert status == 200 and (done["size"], done["rewrapped"]) == (4, 4)
    assert store.signer is not None
    assert store.signer.key_id == done["to_key_id"] == Signer.load(tmp_path).key_id
    record_pair(store)
    signed = store.checkpoint()  # the open store signs with the incoming key
    assert signed is not None and signed.key_id == done["to_key_id"]
    store.close()


def test_a_siem_copy_across_the_rotation_verifies_against_the_pinned_key(
    rotated: tuple[Path, Signer, str], tmp_path: Path
) -> None:
    data_dir, first, _ = rotated
    store = AuditStore(data_dir / "audit.sqlite3", Signer.load(data_dir))
    sink = JsonlSink(tmp_path / "siem.jsonl")
    try:
        SiemForwarder(store, [sink], FileCursors(tmp_path, first.log_id), first.log_id).run_once()
    finally:
        store.close()
    lines = sink.path.read_text().splitlines()
    assert [json.loads(line)["type"] for line in lines].count("key_transition") == 1

    report = verify_siem_copy(lines, first.log_public_key)

    assert report.ok, [str(p) for p in report.problems]
    assert report.key_transitions == 1
    assert report.signed_size == 2 * (PAIRS_BEFORE + PAIRS_AFTER)
    # Without the transition, the new key's checkpoints have nothing to vouch for them.
    dropped = [line for line in lines if '"key_transition"' not in line]
    assert not verify_siem_copy(dropped, first.log_public_key).ok
