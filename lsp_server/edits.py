"""Minimal text edits: change only the lines that differ, never replace a whole file."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher

from lsprotocol import types


@dataclass(frozen=True)
class LineRegion:
    """Whole lines `start`..`end` (0-based, end exclusive) of a document."""

    start: int
    end: int

    def text(self, lines: Sequence[str]) -> str:
        return "".join(lines[self.start : self.end])


def _position(lines: Sequence[str], line: int) -> types.Position:
    """The start of `line`; past the last line, the end of the document."""
    if line < len(lines):
        return types.Position(line=line, character=0)
    if lines and not lines[-1].endswith("\n"):
        return types.Position(
            line=len(lines) - 1, character=len(lines[-1].encode("utf-16-le")) // 2
        )
    return types.Position(line=len(lines), character=0)


def minimal_edits(
    lines: Sequence[str], region: LineRegion, replacement: str
) -> list[types.TextEdit]:
    """Edits that turn `region` of the document into `replacement`, one per changed hunk."""
    old = list(lines[region.start : region.end])
    if old and old[-1].endswith("\n") and not replacement.endswith("\n"):
        replacement += "\n"
    new = replacement.splitlines(keepends=True)
    edits: list[types.TextEdit] = []
    matcher = SequenceMatcher(None, old, new, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        start = _position(lines, region.start + i1)
        end = _position(lines, region.start + i2)
        edits.append(
            types.TextEdit(range=types.Range(start=start, end=end), new_text="".join(new[j1:j2]))
        )
    return edits


def apply_edits(text: str, edits: Sequence[types.TextEdit]) -> str:
    """Apply non-overlapping edits (positions in UTF-16 units, as LSP sends them)."""
    lines = text.splitlines(keepends=True)

    def offset(position: types.Position) -> int:
        before = sum(len(line) for line in lines[: position.line])
        if position.line >= len(lines):
            return before
        units = lines[position.line].encode("utf-16-le")[: position.character * 2]
        return before + len(units.decode("utf-16-le"))

    ordered = sorted(edits, key=lambda e: (e.range.start.line, e.range.start.character))
    for earlier, later in itertools.pairwise(ordered):
        if offset(earlier.range.end) > offset(later.range.start):
            raise ValueError("edits overlap")
    for edit in reversed(ordered):
        text = text[: offset(edit.range.start)] + edit.new_text + text[offset(edit.range.end) :]
    return text
