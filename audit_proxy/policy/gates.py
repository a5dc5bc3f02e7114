"""When a detector can fire: substrings every one of its matches holds, looked for before it runs.

Most prompts hold nothing a detector looks for, and a substring search costs far less than a
pattern's scan. A gate must never hide a match: each of its needles is taken from the pattern
itself, and `folded` lower-cases the text the way a case-insensitive pattern compares it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# The characters that a case-insensitive pattern matches to an ASCII letter but that str.lower()
# leaves alone (dotless i, long s) or turns into two characters (dotted capital I).
_FOLD = str.maketrans({"\u0130": "i", "\u0131": "i", "\u017f": "s"})

Group = tuple[str, ...]


def folded(text: str) -> str:
    """`text` as gates look into it: lower-cased, with the letters above folded to ASCII."""
    return text.lower() if text.isascii() else text.translate(_FOLD).lower()


@dataclass(frozen=True)
class Gate:
    """Lower-case needles: the detector can fire only if, for one of `ways`, each group has a
    needle in the folded text. No ways: it always runs."""

    ways: tuple[tuple[Group, ...], ...] = ()

    def needles(self) -> frozenset[str]:
        return frozenset(n for way in self.ways for group in way for n in group)

    def opens(self, holds: Callable[[str], bool]) -> bool:
        """Whether the text may hold a match, `holds` telling which needles it holds."""
        if not self.ways:
            return True
        return any(all(any(holds(n) for n in group) for group in way) for way in self.ways)


ALWAYS = Gate()


def one_of(*needles: str) -> Gate:
    """A gate that opens where the text holds any of `needles`."""
    return Gate(((needles,),))


def all_of(*groups: Group) -> tuple[Group, ...]:
    """One way through a gate: a needle from each group."""
    return groups
