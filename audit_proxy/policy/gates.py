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

    @property
    def always(self) -> bool:
        return not self.ways

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

    def __init__(self, patterns: Iterable[str]) -> None:
        self._named = self._compile({p: p for p in patterns})

    def _compile(self, named: dict[str, str]) -> tuple[str, ...]:
        """Builds the set from {pattern: what `held` calls it}; returns the names by index."""
        self._set = re2.Set.SearchSet(re2.Options())
        for pattern in named:
            self._set.Add(pattern)
        self._set.Compile()
        return tuple(named.values())

    def held(self, text: str) -> frozenset[str]:
        if not self._named:
            return _NONE
        # (bytes: a JSON string may hold a lone surrogate, which strict UTF-8 refuses)
        matched = self._set.Match(text.encode("utf-8", "surrogatepass"))
        return frozenset([self._named[i] for i in matched]) if matched else _NONE


class NeedleScan(PatternScan):
    """Which of a fixed set of needles a folded text holds, found in one pass."""

    def __init__(self, needles: Iterable[str]) -> None:
        self._named = self._compile({re2.escape(n): n for n in set(needles)})


_NONE: frozenset[str] = frozenset()
