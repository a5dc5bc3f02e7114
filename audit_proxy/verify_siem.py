"""Checking a SIEM's copy of the audit log offline: `bastion audit verify --siem COPY.jsonl`.

The JSONL sink (`audit_proxy.siem`) ships every leaf, then each signed checkpoint and key
transition once the leaves under it have gone out. A SIEM keeps those lines as they came:
delivery is at-least-once, so a line may be there twice, and a SIEM's own export may order them
otherwise. This puts them back in log order, drops exact repeats (two different lines for one
seq, or for one checkpoint size, are a problem of their own), and hands them to the export
verifier under the pinned public key: every leaf rehashed, every signed root recomputed from the
leaves, every signature checked. A checkpoint needs no consistency proof here: the roots of
both it and the one before are recomputed from the same leaves.

The copy holds no payloads (the sink never ships one), so only the records and their order are
vouched for: a prompt or answer is bound by the SHA-256 its record holds. Sorting needs the whole
copy at hand: each record's canonical JSON is held in memory (measured: 0.8 KB for a request
record), where the export verifier streams.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from audit_proxy.verify import (
    EXPORT_FORMAT,
    Problem,
    Report,
    canonical_json,
    log_id_of,
    verify_export,
)


def verify_siem_copy(lines: Iterable[str], public_key: bytes) -> Report:
    """Check a SIEM's copy of the log against the log's `public_key`."""
    copy = _Copy()
    for number, line in enumerate(lines, 1):
        if line.strip():
            copy.take(number, line)
    report = verify_export(copy.as_export(public_key), public_key, proofs_required=False)
    report.problems.extend(copy.problems)
    return report


def verify_siem_copy_file(path: Path, public_key: bytes) -> Report:
    """`verify_siem_copy` on a JSONL file."""
    with path.open(encoding="utf-8") as lines:
        return verify_siem_copy(lines, public_key)


class _Copy:
    """The distinct entries of a copy, by their place in the log."""

    def __init__(self) -> None:
        # seq -> the leaf's canonical JSON and the leaf hash the line gave (a hint).
        self.leaves: dict[int, tuple[str, Any]] = {}
        self.checkpoints: dict[int, dict[str, Any]] = {}
        self.transitions: dict[tuple[int, str], dict[str, Any]] = {}
        self.problems: list[Problem] = []

    def take(self, number: int, line: str) -> None:
        try:
            doc = json.loads(line)
        except ValueError:
            self.problems.append(Problem(None, f"line {number} is not JSON"))
            return
        kind = doc.get("type") if isinstance(doc, dict) else None
        if kind == "leaf":
            self._take_leaf(number, doc)
        elif kind == "checkpoint" and isinstance(doc.get("size"), int):
            self._keep(self.checkpoints, doc["size"], doc, f"the checkpoint of size {doc['size']}")
        elif kind == "key_transition" and isinstance(doc.get("size"), int):
            place = (doc["size"], str(doc.get("to_public_key")))
            self._keep(self.transitions, place, doc, f"the key transition at size {doc['size']}")
        else:
            self.problems.append(
                Problem(None, f"line {number} is no leaf, checkpoint or key transition")
            )

    def _take_leaf(self, number: int, doc: dict[str, Any]) -> None:
        leaf = doc.get("leaf")
        seq = leaf.get("seq") if isinstance(leaf, dict) else None
        if not isinstance(leaf, dict) or not isinstance(seq, int) or seq < 0:
            self.problems.append(Problem(None, f"line {number} holds no readable leaf"))
            return
        if doc.get("seq") != seq:
            self.problems.append(
                Problem(
                    seq, f"line {number} is filed under seq {doc.get('seq')!r}, its leaf is not"
                )
            )
        # What the writer hashed is the leaf's canonical form, which the SIEM kept parsed.
        entry = (canonical_json(leaf).decode(), doc.get("leaf_hash"))
        kept = self.leaves.setdefault(seq, entry)
        if kept[0] != entry[0]:
            self.problems.append(Problem(seq, f"the copy holds two different lines for seq {seq}"))

    def _keep(
        self, into: dict[Any, dict[str, Any]], place: Any, entry: dict[str, Any], what: str
    ) -> None:
        kept = into.setdefault(place, entry)
        if canonical_json(kept) != canonical_json(entry):
            self.problems.append(Problem(None, f"the copy holds two different lines for {what}"))

    def as_export(self, public_key: bytes) -> Iterator[str]:
        """The copy as the lines of an export: the pinned key, then everything in log order."""
        header = {"type": "log", "format": EXPORT_FORMAT, "log_id": log_id_of(public_key),
                  "public_key": public_key.hex()}  # fmt: skip
        yield json.dumps(header)
        for seq in sorted(self.leaves):
            canonical, hint = self.leaves[seq]
            leaf = json.loads(canonical)
            yield json.dumps({"type": "leaf", "seq": seq, "kind": leaf.get("kind"),
                              "record": leaf.get("record"), "canonical": canonical,
                              "leaf_hash": hint, "payload": None})  # fmt: skip
        for place in sorted(self.transitions):
            yield json.dumps(self.transitions[place])
        for size in sorted(self.checkpoints):
            yield json.dumps(self.checkpoints[size])
