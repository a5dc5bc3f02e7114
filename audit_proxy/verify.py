"""The offline verifier: checks an audit export, or one proof, with nothing but the file itself.

It is deliberately apart from the writer: it imports nothing from the store, the Merkle writer or
the signer, and re-implements RFC 6962 hashing and the proof checks (RFC 9162, 2.1.3.2 and
2.1.4.2). It trusts nothing the export says: leaf hashes, roots and seq numbers given by the
writer are only hints that help it name the first bad record; every verdict rests on recomputed
hashes and on Ed25519 signatures under the log's public key (pin it with `public_key`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

EXPORT_FORMAT = "bastion-audit-export/1"
CHECKPOINT_DOMAIN = b"bastion-audit-checkpoint/1\n"
TRANSITION_DOMAIN = b"bastion-audit-key-transition/1\n"
KINDS = frozenset({"request", "outcome"})
# Which field of a record binds its payload: (sha256 field, size field).
PAYLOAD_FIELDS = {"request": ("body_sha256", "body_size"), "outcome": ("sha256", "bytes_out")}


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 ‖ data)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 ‖ left ‖ right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def root_of(leaves: Sequence[bytes]) -> bytes:
    """The RFC 6962 tree head over leaf hashes, computed bottom-up."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    level = list(leaves)
    # Pairing left to right and carrying an odd last node up unchanged is exactly RFC 6962's
    # split at the largest power of two.
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


class LeafHashes:
    """Leaf hashes packed 32 bytes apiece: a log of millions fits in memory as its hashes."""

    def __init__(self) -> None:
        self._data = bytearray()

    def append(self, digest: bytes) -> None:
        self._data += digest

    def __len__(self) -> int:
        return len(self._data) // 32

    def __getitem__(self, index: int) -> bytes:
        return bytes(self._data[32 * index : 32 * index + 32])

    def prefix(self, size: int) -> list[bytes]:
        """The first `size` hashes."""
        return [bytes(self._data[i : i + 32]) for i in range(0, 32 * size, 32)]


class RunningRoot:
    """Tree heads of a growing list of leaves without going over it again: the roots of its
    perfect subtrees, held like the digits of a binary counter (level i: 2**i leaves)."""

    def __init__(self) -> None:
        self.size = 0
        self._peaks: list[bytes | None] = []

    def add(self, leaf: bytes) -> None:
        carry, level = leaf, 0
        while level < len(self._peaks) and (peak := self._peaks[level]) is not None:
            carry = node_hash(peak, carry)
            self._peaks[level] = None
            level += 1
        if level == len(self._peaks):
            self._peaks.append(carry)
        else:
            self._peaks[level] = carry
        self.size += 1

    def root(self) -> bytes:
        """The RFC 6962 tree head: larger (left) subtrees over the smaller ones to their right."""
        head: bytes | None = None
        for peak in self._peaks:
            if peak is not None:
                head = peak if head is None else node_hash(peak, head)
        return head if head is not None else hashlib.sha256(b"").digest()


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> bool:
    """Whether `proof` shows leaf hash `leaf` at `index` in the tree of `size` with `root`."""
    if not 0 <= index < size or any(len(p) != 32 for p in proof):
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> bool:
    """Whether `proof` shows the tree (size1, root1) is a prefix of the tree (size2, root2)."""
    if not 0 <= size1 <= size2 or any(len(p) != 32 for p in proof):
        return False
    if size1 == size2:
        return not proof and root1 == root2
    if size1 == 0:
        return not proof
    if not proof:
        return False
    path = list(proof)
    if size1 & (size1 - 1) == 0:
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == root1 and sr == root2


def checkpoint_message(log_id: str, size: int, root_hex: str, time: str) -> bytes:
    """The bytes a checkpoint signature covers."""
    body = {"log_id": log_id, "root": root_hex, "size": size, "time": time}
    return CHECKPOINT_DOMAIN + canonical_json(body)


def checkpoint_signed(checkpoint: dict[str, Any], public_key: bytes) -> bool:
    """Whether the checkpoint's Ed25519 signature is good under `public_key` (32 raw bytes)."""
    try:
        message = checkpoint_message(
            str(checkpoint["log_id"]),
            int(checkpoint["size"]),
            str(checkpoint["root"]),
            str(checkpoint["time"]),
        )
    except (KeyError, TypeError, ValueError):
        return False
    return _signed_by(public_key, checkpoint.get("signature"), message)


def log_id_of(public_key: bytes) -> str:
    """A log is named by its first signing key: SHA-256 of the raw public key, hex. A signing
    key is named the same way (its key id)."""
    return hashlib.sha256(public_key).hexdigest()


def _signed_by(public_key: bytes, signature: Any, message: bytes) -> bool:
    """Whether `signature` (hex) is a good Ed25519 signature of `message` by `public_key`."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            bytes.fromhex(str(signature)), message
        )
    except (InvalidSignature, TypeError, ValueError):
        return False
    return True


class KeyChain:
    """Which key may sign which checkpoint: the log's own key, then each key a transition
    hands the signing to. A transition must be signed by the key it retires and by the key
    it introduces; a key signs nothing past the tree size at which it was retired."""

    def __init__(self, log_key: bytes) -> None:
        self.log_id = log_id_of(log_key)
        self.current = log_key
        self._keys = {self.log_id: log_key}
        self._retired_at: dict[str, int] = {}
        self._size = 0

    def hand_over(self, transition: dict[str, Any]) -> str | None:
        """Take the next transition; None when good, else why not (the chain then stops)."""
        try:
            target = _hex32(transition.get("to_public_key"), "the incoming key")
            size = transition["size"]
            if not isinstance(size, int) or size < self._size:
                return f"its size {size!r} is before the previous hand-over's"
            message = TRANSITION_DOMAIN + canonical_json(
                {name: transition[name] for name in _TRANSITION_FIELDS}
            )
        except (_Unreadable, KeyError) as exc:
            return f"it is unreadable ({exc})"
        outgoing = log_id_of(self.current)
        if transition.get("log_id") != self.log_id:
            return "it belongs to another log"
        if transition.get("from_key_id") != outgoing:
            named = str(transition.get("from_key_id"))[:16]
            return f"it hands over from key {named}, not from the current key {outgoing[:16]}"
        if not _signed_by(self.current, transition.get("from_signature"), message):
            return "the outgoing key's signature is not valid"
        if not _signed_by(target, transition.get("to_signature"), message):
            return "the incoming key's signature is not valid"
        incoming = log_id_of(target)
        if incoming in self._keys:
            return f"key {incoming[:16]} was in use before"
        self._retired_at[outgoing] = size
        self._keys[incoming] = target
        self.current = target
        self._size = size
        return None

    def key_for(self, checkpoint: dict[str, Any]) -> tuple[bytes | None, str | None]:
        """The key that must have signed `checkpoint`, or None and why no key may."""
        key_id = checkpoint.get("key_id", self.log_id)
        key = self._keys.get(str(key_id))
        if key is None:
            return (
                None,
                f"it names signing key {str(key_id)[:16]}, which no valid key transition "
                "introduces",
            )
        retired = self._retired_at.get(str(key_id))
        size = checkpoint.get("size")
        if retired is not None and isinstance(size, int) and size > retired:
            return (
                None,
                f"its key {str(key_id)[:16]} signed it after it was rotated out at size {retired}",
            )
        return key, None


_TRANSITION_FIELDS = ("from_key_id", "log_id", "root", "size", "time", "to_public_key")


@dataclass
class Problem:
    """One failed check; `seq` is the first record it implicates (None: the log as a whole)."""

    seq: int | None
    message: str

    def __str__(self) -> str:
        where = f"record seq {self.seq}" if self.seq is not None else "log"
        return f"{where}: {self.message}"


@dataclass
class Report:
    """What `verify_export` found."""

    records: int = 0
    checkpoints: int = 0
    payloads_checked: int = 0
    # Payloads a purge destroyed (the export marks them): their records still verify.
    payloads_shredded: int = 0
    # Payloads the export leaves out without saying why (say, an export made without them).
    payloads_absent: int = 0
    signed_size: int = 0
    # Hand-overs of the signing key that verified (`bastion audit rotate-key`).
    key_transitions: int = 0
    # The first record no signed checkpoint covers yet (None: all are covered).
    unsigned_from: int | None = None
    public_key: str = ""
    log_id: str = ""
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def first_problem(self) -> Problem | None:
        """The problem that implicates the earliest record (log-wide ones after records)."""
        if not self.problems:
            return None
        return min(self.problems, key=lambda p: (p.seq is None, p.seq or 0))


class _Unreadable(Exception):
    pass


def _hex32(value: Any, what: str) -> bytes:
    try:
        raw = bytes.fromhex(str(value))
    except ValueError as exc:
        raise _Unreadable(f"{what} is not hex") from exc
    if len(raw) != 32:
        raise _Unreadable(f"{what} is not 32 bytes")
    return raw


def verify_export(
    lines: Iterable[str], public_key: bytes | None = None, *, proofs_required: bool = True
) -> Report:
    """Check every leaf, payload, root, signature and consistency proof of an export.

    `proofs_required=False`: a checkpoint may come without a consistency proof from the one
    before it, which every leaf of both then stands in for (see `audit_proxy.verify_siem`).
    """
    report = Report()
    header: dict[str, Any] | None = None
    # Leaves are checked as they stream by: only their hashes stay in memory.
    leaves = _LeafChecks(report)
    checkpoints: list[dict[str, Any]] = []
    transitions: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            report.problems.append(Problem(len(leaves.hashes), f"line {number} is not JSON"))
            continue
        kind = doc.get("type") if isinstance(doc, dict) else None
        if kind == "log" and header is None:
            header = doc
        elif kind == "leaf":
            leaves.check(doc)
        elif kind == "checkpoint":
            checkpoints.append(doc)
        elif kind == "key_transition":
            transitions.append(doc)
        else:
            report.problems.append(
                Problem(len(leaves.hashes), f"line {number} is not a known entry")
            )
    if header is None or header.get("format") != EXPORT_FORMAT:
        report.problems.append(Problem(None, f"no {EXPORT_FORMAT} header line"))
        return report
    try:
        key = _hex32(header.get("public_key"), "the public key")
    except _Unreadable as exc:
        report.problems.append(Problem(None, str(exc)))
        return report
    report.public_key = key.hex()
    report.log_id = log_id_of(key)
    if public_key is not None and public_key != key:
        report.problems.append(
            Problem(None, "the export is signed by another key than the pinned one")
        )
    if header.get("log_id") != report.log_id:
        report.problems.append(Problem(None, "the log id does not match the public key"))

    hashes, hinted = leaves.hashes, leaves.hinted
    report.records = len(hashes)
    chain = _key_chain(key, transitions, hashes, report)
    _check_checkpoints(checkpoints, hashes, hinted, chain, report, proofs_required)
    return report


def _key_chain(
    key: bytes, transitions: list[dict[str, Any]], hashes: LeafHashes, report: Report
) -> KeyChain:
    """Follow the key transitions from the log's key; each must also match the records."""
    chain = KeyChain(key)
    for transition in transitions:
        size = transition.get("size")
        first = size if isinstance(size, int) and 0 <= size <= len(hashes) else len(hashes)
        label = f"key transition to key {log_id_of(_raw_or_empty(transition))[:16]}"
        problem = chain.hand_over(transition)
        if problem is None and isinstance(size, int):
            try:
                root = _hex32(transition.get("root"), "root")
            except _Unreadable as exc:
                problem = str(exc)
            else:
                if size > len(hashes):
                    problem = f"it is at size {size}, past the end of the export"
                elif root_of(hashes.prefix(size)) != root:
                    problem = f"its root is not that of the records before seq {size}"
        if problem is not None:
            report.problems.append(
                Problem(first, f"{label}: {problem}; checkpoints signed by later keys are refused")
            )
            break
        report.key_transitions += 1
    return chain


def _raw_or_empty(transition: dict[str, Any]) -> bytes:
    try:
        return _hex32(transition.get("to_public_key"), "key")
    except _Unreadable:
        return b""


class _LeafChecks:
    """Per-record checks, one leaf at a time; keeps the recomputed leaf hashes and the
    writer's (hints: all zeros where it gave none readable)."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.hashes = LeafHashes()
        self.hinted = LeafHashes()
        self._requests: set[str] = set()
        self._outcomes: set[str] = set()
        self._in_order = True

    def check(self, entry: dict[str, Any]) -> None:
        report, position = self.report, len(self.hashes)
        seq, kind, record = entry.get("seq"), entry.get("kind"), entry.get("record")
        claimed = entry.get("canonical")
        # After the first record out of order every later one is too: report only the first.
        if seq != position and self._in_order:
            self._in_order = False
            if isinstance(seq, int) and seq > position:
                why = f"missing or moved: the export has seq {seq} in its place"
            else:
                why = f"out of place: the export has seq {seq!r} at position {position}"
            report.problems.append(Problem(position, why))
        # The leaf is what the writer hashed; the record must be exactly its canonical form.
        data = canonical_json({"kind": kind, "record": record, "seq": seq})
        if not isinstance(claimed, str) or claimed.encode() != data:
            report.problems.append(Problem(position, "the record differs from its leaf bytes"))
            if isinstance(claimed, str):
                data = claimed.encode()
        self.hashes.append(leaf_hash(data))
        try:
            self.hinted.append(_hex32(entry.get("leaf_hash"), "leaf hash"))
        except _Unreadable:
            self.hinted.append(_NO_HINT)
        if kind not in KINDS or not isinstance(record, dict):
            report.problems.append(Problem(position, f"unknown record kind {kind!r}"))
            return
        if entry.get("payload") is None:
            if entry.get("payload_shredded") is True:
                report.payloads_shredded += 1
            else:
                report.payloads_absent += 1
        else:
            _check_payload(position, kind, record, entry["payload"], report)
        self._check_pairing(position, kind, record)

    def _check_pairing(self, position: int, kind: str, record: dict[str, Any]) -> None:
        """Each request once; each outcome once, after its request."""
        problems = self.report.problems
        record_id = record.get("id") if kind == "request" else record.get("request_id")
        if not isinstance(record_id, str):
            problems.append(Problem(position, "the record has no id"))
        elif kind == "request":
            if record_id in self._requests:
                problems.append(Problem(position, f"request {record_id} appears twice"))
            self._requests.add(record_id)
        else:
            if record_id not in self._requests:
                problems.append(
                    Problem(position, f"outcome of request {record_id}, which is not before it")
                )
            elif record_id in self._outcomes:
                problems.append(Problem(position, f"second outcome of {record_id}"))
            self._outcomes.add(record_id)


_NO_HINT = bytes(32)


def _check_payload(
    position: int, kind: str, record: dict[str, Any], payload: Any, report: Report
) -> None:
    try:
        raw = base64.b64decode(str(payload), validate=True)
    except (binascii.Error, ValueError):
        report.problems.append(Problem(position, "the payload is not base64"))
        return
    sha_field, size_field = PAYLOAD_FIELDS[kind]
    if hashlib.sha256(raw).hexdigest() != record.get(sha_field):
        report.problems.append(Problem(position, f"the payload does not match its {sha_field}"))
    elif len(raw) != record.get(size_field):
        report.problems.append(Problem(position, f"the payload does not match its {size_field}"))
    else:
        report.payloads_checked += 1


def _check_checkpoints(
    checkpoints: list[dict[str, Any]],
    hashes: LeafHashes,
    hinted: LeafHashes,
    chain: KeyChain,
    report: Report,
    proofs_required: bool = True,
) -> None:
    if not checkpoints:
        if hashes:
            report.problems.append(
                Problem(
                    0,
                    "no signed checkpoint covers any record (an export taken before the log's "
                    "first checkpoint? the proxy signs one within seconds: export again)",
                )
            )
        return
    previous: dict[str, Any] | None = None
    good_size = 0
    # Checkpoints come in order of size: each root extends the last one's work (a log with a
    # checkpoint every few records would otherwise cost records x checkpoints).
    running = RunningRoot()
    for checkpoint in checkpoints:
        report.checkpoints += 1
        size = checkpoint.get("size")
        if not isinstance(size, int) or size < 0:
            report.problems.append(Problem(good_size, f"a checkpoint has a bad size {size!r}"))
            continue
        first = good_size if good_size < size else size
        label = f"checkpoint of size {size}"
        if checkpoint.get("log_id") != report.log_id:
            report.problems.append(Problem(first, f"{label} belongs to another log"))
            continue
        key, refused = chain.key_for(checkpoint)
        if key is None:
            report.problems.append(Problem(first, f"{label}: {refused}"))
            continue
        if not checkpoint_signed(checkpoint, key):
            report.problems.append(Problem(first, f"{label}: the signature is not valid"))
            continue
        try:
            root = _hex32(checkpoint.get("root"), f"{label} root")
        except _Unreadable as exc:
            report.problems.append(Problem(first, str(exc)))
            continue
        if previous is not None:
            _check_consistency(previous, checkpoint, first, report, proofs_required)
        previous = checkpoint
        if size > len(hashes):
            report.problems.append(
                Problem(
                    len(hashes),
                    f"missing: the signed {label} covers records up to seq {size - 1}, "
                    f"the export ends before seq {len(hashes)}",
                )
            )
            continue
        if _root(hashes, size, running) != root:
            culprit = _culprit(hashes, hinted, size, first, report)
            message = f"the records before seq {size} do not match the signed {label}"
            report.problems.append(Problem(culprit, message))
            continue
        good_size = max(good_size, size)
    report.signed_size = good_size
    if len(hashes) > good_size:
        report.unsigned_from = good_size
        report.notes.append(
            f"records seq {good_size}..{len(hashes) - 1} are not yet under a signed checkpoint"
        )


def _root(hashes: LeafHashes, size: int, running: RunningRoot) -> bytes:
    """The tree head of the first `size` records, by `running` when it is not past them."""
    if size < running.size:
        return root_of(hashes.prefix(size))
    for seq in range(running.size, size):
        running.add(hashes[seq])
    return running.root()


def _culprit(hashes: LeafHashes, hinted: LeafHashes, size: int, first: int, report: Report) -> int:
    """Which record to name when a signed root does not match the records under it.

    The verdict never rests on this, only the name: a record that already failed its own
    checks, else the first whose bytes no longer hash to the writer's leaf hash, else (the
    forger rewrote those too) the first record the last good checkpoint does not cover.
    """
    flagged = [p.seq for p in report.problems if p.seq is not None and p.seq < size]
    if flagged:
        return min(flagged)
    for seq in range(size):
        theirs = hinted[seq]
        if theirs != _NO_HINT and hashes[seq] != theirs:
            return seq
    return first


def _check_consistency(
    older: dict[str, Any],
    newer: dict[str, Any],
    first: int,
    report: Report,
    proofs_required: bool = True,
) -> None:
    size1, size2 = int(older["size"]), int(newer["size"])
    label = f"checkpoint of size {size2}"
    if size2 < size1:
        report.problems.append(Problem(size2, f"{label} is smaller than the one before it"))
        return
    if str(newer.get("time", "")) < str(older.get("time", "")):
        report.problems.append(Problem(first, f"{label} is dated before the one before it"))
    if not proofs_required and "consistency" not in newer:
        return  # both roots are checked against the leaves themselves
    try:
        proof = [_hex32(p, "consistency proof") for p in newer.get("consistency") or []]
        root1 = _hex32(older["root"], "root")
        root2 = _hex32(newer["root"], "root")
    except _Unreadable as exc:
        report.problems.append(Problem(first, f"{label}: {exc}"))
        return
    if newer.get("consistency_from") != size1 or not verify_consistency(
        size1, size2, proof, root1, root2
    ):
        report.problems.append(
            Problem(first, f"{label} is not consistent with the checkpoint of size {size1}")
        )


def verify_export_file(path: Path, public_key: bytes | None = None) -> Report:
    """`verify_export` on a JSONL file."""
    with path.open(encoding="utf-8") as lines:
        return verify_export(lines, public_key)


def verify_proof(doc: dict[str, Any], public_key: bytes | None = None) -> str | None:
    """Check an inclusion or consistency proof document; None if good, else why not."""
    try:
        key = _hex32(doc.get("public_key"), "public key")
    except _Unreadable as exc:
        return str(exc)
    if public_key is not None and key != public_key:
        return "signed by another key than the pinned one"
    chain = KeyChain(key)
    if doc.get("log_id") != chain.log_id:
        return "the log id does not match the public key"
    transitions = doc.get("key_transitions") or []
    if not isinstance(transitions, list):
        return "unreadable proof: key_transitions is not a list"
    for transition in transitions:
        problem = chain.hand_over(transition) if isinstance(transition, dict) else "not an object"
        if problem is not None:
            return f"a key transition does not verify: {problem}"
    try:
        proof = [_hex32(p, "proof") for p in doc.get("proof") or []]
        if doc.get("type") == "inclusion":
            return _inclusion_problem(doc, proof, chain)
        if doc.get("type") == "consistency":
            return _consistency_problem(doc, proof, chain)
    except (_Unreadable, KeyError, TypeError, ValueError) as exc:
        return f"unreadable proof: {exc}"
    return f"unknown proof type {doc.get('type')!r}"


def _signed(checkpoint: Any, chain: KeyChain) -> dict[str, Any]:
    if not isinstance(checkpoint, dict) or checkpoint.get("log_id") != chain.log_id:
        raise ValueError("the checkpoint is not this log's")
    key, refused = chain.key_for(checkpoint)
    if key is None:
        raise ValueError(f"the checkpoint cannot be trusted: {refused}")
    if not checkpoint_signed(checkpoint, key):
        raise ValueError("the checkpoint's signature is not valid")
    return checkpoint


def _inclusion_problem(doc: dict[str, Any], proof: list[bytes], chain: KeyChain) -> str | None:
    try:
        checkpoint = _signed(doc.get("checkpoint"), chain)
    except ValueError as exc:
        return str(exc)
    leaf = _hex32(doc["leaf_hash"], "leaf hash")
    if isinstance(doc.get("canonical"), str) and leaf_hash(doc["canonical"].encode()) != leaf:
        return "the record does not hash to the leaf hash"
    seq, size = int(doc["seq"]), int(doc["size"])
    if size != checkpoint["size"]:
        return "the proof is not for the checkpoint's size"
    if not verify_inclusion(seq, size, leaf, proof, _hex32(checkpoint["root"], "root")):
        return f"record seq {seq} is not in the signed tree of size {size}"
    return None


def _consistency_problem(doc: dict[str, Any], proof: list[bytes], chain: KeyChain) -> str | None:
    try:
        older = _signed(doc.get("checkpoint1"), chain)
        newer = _signed(doc.get("checkpoint2"), chain)
    except ValueError as exc:
        return str(exc)
    size1, size2 = int(doc["size1"]), int(doc["size2"])
    if (size1, size2) != (older["size"], newer["size"]):
        return "the proof is not for the checkpoints' sizes"
    root1, root2 = _hex32(older["root"], "root"), _hex32(newer["root"], "root")
    if not verify_consistency(size1, size2, proof, root1, root2):
        return f"the tree of size {size2} does not extend the tree of size {size1}"
    return None
