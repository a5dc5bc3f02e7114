"""Export → offline verify, and every kind of tampering an auditor must catch."""

from __future__ import annotations

import base64
import io
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from audit_proxy import export, verify
from audit_proxy.checkpoints import Signer
from audit_proxy.merkle import canonical_json, leaf_hash
from audit_proxy.store import AuditStore
from bastion import audit_commands

from .records import record_pair

Entries = list[dict[str, Any]]


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A log of 12 records (6 requests, 6 outcomes), checkpoints at 4, 8 and 12."""
    data_dir = tmp_path_factory.mktemp("log")
    store = AuditStore(data_dir / "audit.sqlite3", Signer.load_or_create(data_dir), 4)
    for i in range(6):
        record_pair(store, json.dumps({"prompt": f"def f{i}():"}).encode())
    store.close()
    return data_dir


@pytest.fixture(scope="module")
def entries(log_dir: Path) -> Entries:
    out = io.StringIO()
    assert export.export_log(log_dir, out) == (12, 3, 12)
    return [json.loads(line) for line in out.getvalue().splitlines()]


def check(entries: Entries) -> verify.Report:
    return verify.verify_export([json.dumps(e) for e in entries])


def leaf(entries: Entries, seq: int) -> dict[str, Any]:
    return next(e for e in entries if e["type"] == "leaf" and e["seq"] == seq)


def rewrite(entry: dict[str, Any], hint: bool = False) -> None:
    """Recompute the leaf bytes (and, with `hint`, the writer's leaf hash) after an edit."""
    data = canonical_json({"kind": entry["kind"], "record": entry["record"], "seq": entry["seq"]})
    entry["canonical"] = data.decode()
    if hint:
        entry["leaf_hash"] = leaf_hash(data).hex()


def test_an_untouched_export_verifies(entries: Entries) -> None:
    report = check(entries)
    assert report.ok, report.problems
    assert (report.records, report.checkpoints, report.signed_size) == (12, 3, 12)
    assert report.payloads_checked == 12
    assert report.notes == []


def test_an_export_without_payloads_verifies(log_dir: Path) -> None:
    out = io.StringIO()
    export.export_log(log_dir, out, payloads=False)
    report = verify.verify_export(out.getvalue().splitlines())
    assert report.ok and report.payloads_checked == 0
    assert (report.payloads_absent, report.payloads_shredded) == (12, 0)


def edit_field(e: Entries) -> None:
    leaf(e, 5)["record"]["user"] = "mallory"


def edit_field_and_leaf(e: Entries) -> None:
    leaf(e, 5)["record"]["user"] = "mallory"
    rewrite(leaf(e, 5))


def edit_payload(e: Entries) -> None:
    leaf(e, 6)["payload"] = base64.b64encode(b'{"prompt":"something else"}').decode()


def edit_tokens(e: Entries) -> None:
    leaf(e, 7)["record"]["completion_tokens"] = 0
    rewrite(leaf(e, 7))


def delete(e: Entries) -> None:
    e.remove(leaf(e, 5))


def insert(e: Entries) -> None:
    copy = json.loads(json.dumps(leaf(e, 4)))
    e.insert(e.index(leaf(e, 4)) + 1, copy)


def reorder(e: Entries) -> None:
    a, b = e.index(leaf(e, 5)), e.index(leaf(e, 6))
    e[a], e[b] = e[b], e[a]


def reorder_renumbered(e: Entries) -> None:
    five, six = leaf(e, 5), leaf(e, 6)
    five["seq"], six["seq"] = 6, 5
    rewrite(five)
    rewrite(six)
    a, b = e.index(five), e.index(six)
    e[a], e[b] = e[b], e[a]


def truncate(e: Entries) -> None:
    for seq in range(9, 12):
        e.remove(leaf(e, seq))


def forge_signature(e: Entries) -> None:
    checkpoint = [x for x in e if x["type"] == "checkpoint"][1]
    signature = bytearray(bytes.fromhex(checkpoint["signature"]))
    signature[0] ^= 1
    checkpoint["signature"] = signature.hex()


TAMPERS: list[tuple[Callable[[Entries], None], int, str]] = [
    (edit_field, 5, "differs from its leaf bytes"),
    (edit_field_and_leaf, 5, "do not match the signed checkpoint of size 8"),
    (edit_payload, 6, "payload does not match its body_sha256"),
    (edit_tokens, 7, "do not match the signed checkpoint of size 8"),
    (delete, 5, "missing"),
    (insert, 5, "out of place"),
    (reorder, 5, "missing or moved"),
    (reorder_renumbered, 5, "do not match the signed checkpoint of size 8"),
    (truncate, 9, "missing: the signed checkpoint of size 12"),
    (forge_signature, 4, "signature is not valid"),
]


@pytest.mark.parametrize(
    ("tamper", "first_bad", "why"), TAMPERS, ids=[t[0].__name__ for t in TAMPERS]
)
def test_tampering_fails_naming_the_first_bad_record(
    entries: Entries, tamper: Callable[[Entries], None], first_bad: int, why: str
) -> None:
    tampered = json.loads(json.dumps(entries))
    tamper(tampered)
    report = check(tampered)
    assert not report.ok
    first = report.first_problem()
    assert first is not None
    assert (first.seq, why in first.message) == (first_bad, True), report.problems


def test_insert_at_position_names_the_inserted_record(entries: Entries) -> None:
    tampered = json.loads(json.dumps(entries))
    insert(tampered)
    first = check(tampered).first_problem()
    assert first is not None and first.seq == 5


def test_a_forger_who_rewrites_leaf_hashes_is_still_caught(entries: Entries) -> None:
    tampered = json.loads(json.dumps(entries))
    leaf(tampered, 5)["record"]["model"] = "another"
    rewrite(leaf(tampered, 5), hint=True)
    first = check(tampered).first_problem()
    # Without the writer's hashes it can only name the signed range the record is in.
    assert first is not None and first.seq == 4
    assert "checkpoint of size 8" in first.message


def test_a_checkpoint_signed_by_another_key_fails(entries: Entries, tmp_path: Path) -> None:
    tampered = json.loads(json.dumps(entries))
    other = Signer.load_or_create(tmp_path)
    checkpoint = next(x for x in tampered if x["type"] == "checkpoint")
    checkpoint.update(other.sign(4, bytes.fromhex(checkpoint["root"])).as_dict())
    first = check(tampered).first_problem()
    assert first is not None and first.seq == 0 and "another log" in first.message


def test_a_whole_export_re_signed_with_another_key_fails_against_the_pinned_key(
    entries: Entries, log_dir: Path, tmp_path: Path
) -> None:
    other = Signer.load_or_create(tmp_path)
    tampered = json.loads(json.dumps(entries))
    tampered[0]["public_key"] = other.public_key.hex()
    tampered[0]["log_id"] = other.log_id
    for x in tampered:
        if x["type"] == "checkpoint":
            x.update(other.sign(x["size"], bytes.fromhex(x["root"])).as_dict())
    assert check(tampered).ok  # self-consistent: only a pinned key tells
    pinned = Signer.load_or_create(log_dir).public_key
    report = verify.verify_export([json.dumps(e) for e in tampered], pinned)
    assert not report.ok and "pinned" in str(report.first_problem())


def test_an_altered_consistency_proof_fails(entries: Entries) -> None:
    tampered = json.loads(json.dumps(entries))
    checkpoint = [x for x in tampered if x["type"] == "checkpoint"][2]
    checkpoint["consistency"][0] = "00" * 32
    first = check(tampered).first_problem()
    assert first is not None and "not consistent" in first.message


def test_unsigned_tail_is_reported(
    log_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "d"
    store = AuditStore(data_dir / "audit.sqlite3", Signer.load_or_create(data_dir), 4)
    record_pair(store)
    record_pair(store)
    record_pair(store)
    store.file_staged()  # as a running writer does soon after: it signs the checkpoint due at 4
    out = io.StringIO()
    # While the writer is open: 6 records, signed through 4.
    assert export.export_log(data_dir, out) == (6, 1, 4)
    report = verify.verify_export(out.getvalue().splitlines())
    assert report.ok and report.signed_size == 4
    assert report.notes == ["records seq 4..5 are not yet under a signed checkpoint"]
    assert report.unsigned_from == 4
    export_file = tmp_path / "export.jsonl"
    export_file.write_text(out.getvalue())
    assert audit_commands.main(["audit", "verify", str(export_file)]) == 0
    assert audit_commands.main(["audit", "verify", "--strict", str(export_file)]) == 1
    # The exporter is told which records verify cannot vouch for yet, and what to do.
    capsys.readouterr()
    args = ["audit", "export", "--data-dir", str(data_dir), str(tmp_path / "again.jsonl")]
    assert audit_commands.main(args) == 0
    told = capsys.readouterr().err
    assert "exported 6 records and 1 checkpoints" in told
    assert "records seq 4..5 are not yet under a signed checkpoint" in told
    assert "export again" in told
    store.close()
    assert audit_commands.main(args) == 0  # the writer signed at close: nothing to note
    assert "not yet under" not in capsys.readouterr().err


def test_an_export_before_the_first_checkpoint_fails_and_says_to_export_again(
    tmp_path: Path,
) -> None:
    store = AuditStore(tmp_path / "audit.sqlite3", Signer.load_or_create(tmp_path))
    record_pair(store)
    out = io.StringIO()
    assert export.export_log(tmp_path, out) == (2, 0, 0)
    store.close()
    first = verify.verify_export(out.getvalue().splitlines()).first_problem()
    assert first is not None and first.seq == 0
    assert "no signed checkpoint covers any record" in first.message
    assert "export again" in first.message


def test_inclusion_proofs_verify_and_fail_when_altered(log_dir: Path) -> None:
    for seq in range(12):
        assert verify.verify_proof(export.inclusion_proof(log_dir, seq)) is None
    proof = export.inclusion_proof(log_dir, 3, size=8)
    assert proof["size"] == 8 and verify.verify_proof(proof) is None
    alterations: list[Callable[[dict[str, Any]], None]] = [
        lambda p: p.update(seq=p["seq"] + 1),
        lambda p: p.update(proof=["00" * 32, *p["proof"][1:]]),
        lambda p: p.update(proof=p["proof"][:-1]),
        lambda p: p.update(leaf_hash="11" * 32),
        lambda p: p.update(canonical=p["canonical"].replace("stop", "length")),
        lambda p: p["checkpoint"].update(root="22" * 32),
        lambda p: p["checkpoint"].update(size=12),
    ]
    for alter in alterations:
        bad = json.loads(json.dumps(proof))
        alter(bad)
        assert verify.verify_proof(bad) is not None, bad


def test_consistency_proofs_verify_and_fail_when_altered(log_dir: Path) -> None:
    for size1, size2 in [(4, 8), (4, 12), (8, 12), (12, 12)]:
        assert verify.verify_proof(export.consistency_proof(log_dir, size1, size2)) is None
    proof = export.consistency_proof(log_dir, 4, 12)
    alterations: list[Callable[[dict[str, Any]], None]] = [
        lambda p: p.update(proof=["00" * 32, *p["proof"][1:]]),
        lambda p: p.update(proof=p["proof"][:-1]),
        lambda p: p.update(size1=8),
        lambda p: p["checkpoint2"].update(root="22" * 32),
    ]
    for alter in alterations:
        bad = json.loads(json.dumps(proof))
        alter(bad)
        assert verify.verify_proof(bad) is not None, bad


def test_cli_export_verify_prove(
    log_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "audit.jsonl"
    assert audit_commands.main(["audit", "export", "--data-dir", str(log_dir), str(out)]) == 0
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    assert audit_commands.main(["audit", "verify", str(out)]) == 0
    assert capsys.readouterr().out.startswith("OK: 12 records, 3 checkpoints")

    key = tmp_path / "key.pem"
    assert audit_commands.main(["audit", "public-key", "--data-dir", str(log_dir)]) == 0
    key.write_text(capsys.readouterr().out)
    assert audit_commands.main(["audit", "verify", str(out), "--public-key", str(key)]) == 0
    capsys.readouterr()

    lines = out.read_text().splitlines()
    doc = json.loads(lines[4])
    doc["record"]["route"] = "/elsewhere"
    lines[4] = json.dumps(doc)
    out.write_text("\n".join(lines) + "\n")
    assert audit_commands.main(["audit", "verify", str(out)]) == 1
    assert capsys.readouterr().out.startswith("FAILED: record seq 3:")

    assert audit_commands.main(["audit", "prove", "--data-dir", str(log_dir), "7"]) == 0
    proof = tmp_path / "proof.json"
    proof.write_text(capsys.readouterr().out)
    assert audit_commands.main(["audit", "verify-proof", str(proof)]) == 0
    assert "record seq 7 is in the signed tree of size 12" in capsys.readouterr().out
    bad = json.loads(proof.read_text())
    bad["seq"] = 6
    proof.write_text(json.dumps(bad))
    assert audit_commands.main(["audit", "verify-proof", str(proof)]) == 1
    capsys.readouterr()

    args = ["audit", "prove", "--data-dir", str(log_dir), "--consistency", "4", "12"]
    assert audit_commands.main(args) == 0
    proof.write_text(capsys.readouterr().out)
    assert audit_commands.main(["audit", "verify-proof", str(proof)]) == 0
    assert audit_commands.main(["audit", "prove", "--data-dir", str(log_dir), "99"]) == 1


def test_tail_prints_records_without_payloads(
    log_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert audit_commands.main(["audit", "tail", "--data-dir", str(log_dir), "-n", "3"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["seq"] for line in lines] == [9, 10, 11]
    assert all("payload" not in line and "body" not in line["record"] for line in lines)


def test_follow_picks_up_new_records(tmp_path: Path) -> None:
    store = AuditStore(tmp_path / "audit.sqlite3")
    record_pair(store)
    reader = AuditStore(tmp_path / "audit.sqlite3")
    entries = export.follow(reader, 0, follow=True, poll_s=0.01)
    assert [next(entries)["seq"], next(entries)["seq"]] == [0, 1]
    record_pair(store)
    assert next(entries)["kind"] == "request"
    reader.close()
    store.close()


def test_an_export_read_in_small_batches_is_the_same_export(
    log_dir: Path, entries: Entries, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export, "EXPORT_BATCH", 5)
    out = io.StringIO()
    assert export.export_log(log_dir, out) == (12, 3, 12)
    batched = [json.loads(line) for line in out.getvalue().splitlines()]
    assert batched[1:] == entries[1:]  # all but the header's export time


def test_checkpoints_out_of_order_are_named_and_their_roots_still_checked(
    entries: Entries,
) -> None:
    swapped = [dict(e) for e in entries]
    places = [i for i, e in enumerate(swapped) if e["type"] == "checkpoint"]
    swapped[places[0]], swapped[places[1]] = swapped[places[1]], swapped[places[0]]
    report = check(swapped)
    messages = [str(p) for p in report.problems]
    assert any("smaller than the one before it" in m for m in messages), messages
    # The smaller tree's root is recomputed on its own, and still matches its records.
    assert not any("do not match the signed" in m for m in messages), messages


def test_proofs_on_a_larger_log_keep_tile_hashes_and_verify(tmp_path: Path) -> None:
    store = AuditStore(tmp_path / "audit.sqlite3", Signer.load_or_create(tmp_path), 10**6)
    for i in range(300):
        record_pair(store, json.dumps({"prompt": f"def f{i}():"}).encode())
    store.checkpoint()
    for i in range(10):
        record_pair(store, json.dumps({"prompt": f"def g{i}():"}).encode())
    store.close()  # checkpoints at 600 and 620
    for seq in (0, 255, 256, 599, 619):
        assert verify.verify_proof(export.inclusion_proof(tmp_path, seq)) is None
    assert verify.verify_proof(export.consistency_proof(tmp_path, 600, 620)) is None
    reader = AuditStore(tmp_path / "audit.sqlite3")
    try:
        kept = reader.saved_tiles(10)
        assert len(kept) == 620 // 256
        reader.save_tiles(0, [b"\x00" * 32])  # kept already: left as it is
        assert reader.saved_tiles(10) == kept
    finally:
        reader.close()
    # A kept tile is what proofs use: a wrong one makes them fail, and verify says so.
    conn = sqlite3.connect(tmp_path / "audit.sqlite3")
    conn.execute("UPDATE tiles SET hash = zeroblob(32) WHERE idx = 0")
    conn.commit()
    conn.close()
    assert verify.verify_proof(export.inclusion_proof(tmp_path, 300)) is not None
