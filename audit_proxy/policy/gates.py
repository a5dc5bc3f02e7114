"""When a detector can fire: substrings every one of its matches holds, looked for before it runs.

Most prompts hold nothing a detector looks for, and finding which needles a text holds costs far
less than the detectors' scans: one pass of an RE2 set over all of them (a DFA, some 10 us for a
4 KB prompt and a hundred needles, where `needle in text` costs 1 to 3 us a needle).
A gate must never hide a match: each of its needles is taken from the pattern itself, and
`folded` lower-cases the text the way a case-insensitive pattern compares it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import re2

# Letters a case-insensitive pattern matches to an ASCII one that str.lower() leaves apart: the
# dotless i and the long s; the dotted capital I lowers to "i" and a combining dot above.
_FOLDS = (("\u0131", "i"), ("\u017f", "s"), ("\u0307", ""))

Group = tuple[str, ...]


def folded(text: str) -> str:
    """`text` as gates look into it: lower-cased, with the letters above folded to ASCII (only
    whether a needle occurs counts here, not where: dropping a character only adds some)."""
    lowered = text.lower()
    if not text.isascii():
        for letter, ascii_letter in _FOLDS:
            lowered = lowered.replace(letter, ascii_letter)
    return lowered


@dataclass(frozen=True)
class Gate:
    """Lower-case needles: the detector can fire only if, for one of `ways`, each group has a
    needle in the folded text. No ways: it always runs."""

    ways: tuple[tuple[Group, ...], ...] = ()
    # The common case, one way of one group, as a set: a single `isdisjoint` per request.
    _any_of: frozenset[str] | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if len(self.ways) == 1 and len(self.ways[0]) == 1:
            object.__setattr__(self, "_any_of", frozenset(self.ways[0][0]))

    def needles(self) -> frozenset[str]:
        return frozenset(n for way in self.ways for group in way for n in group)

    def opens(self, held: frozenset[str]) -> bool:
        """Whether a text that holds the needles `held` may hold a match."""
        if self._any_of is not None:
            return not self._any_of.isdisjoint(held)
        if not self.ways:
            return True
        return any(all(not held.isdisjoint(group) for group in way) for way in self.ways)


ALWAYS = Gate()


def one_of(*needles: str) -> Gate:
    """A gate that opens where the text holds any of `needles`."""
    return Gate(((needles,),))


class PatternScan:
    """Which of a fixed set of RE2 patterns match somewhere in a text, found in one pass."""

    def __init__(self, items: Iterable[str]) -> None:
        named = {self._pattern(item): item for item in items}
        self._names = tuple(named.values())
        self._set = re2.Set.SearchSet(re2.Options())
        for pattern in named:
            self._set.Add(pattern)
        self._set.Compile()

    @staticmethod
    def _pattern(item: str) -> str:
        return item

    def held(self, text: str) -> frozenset[str]:
        """The items (patterns, or needles) that occur in `text`."""
        if not self._names:
            return _NONE
        # (bytes: a JSON string may hold a lone surrogate, which strict UTF-8 refuses)
        matched = self._set.Match(text.encode("utf-8", "surrogatepass"))
        return frozenset([self._names[i] for i in matched]) if matched else _NONE


class NeedleScan(PatternScan):
    """Which of a fixed set of needles a folded text holds, found in one pass."""

    @staticmethod
    def _pattern(item: str) -> str:
        escaped: str = re2.escape(item)
        return escaped


_NONE: frozenset[str] = frozenset()
