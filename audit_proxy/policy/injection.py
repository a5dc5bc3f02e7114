"""Injection guards: instructions hidden in code or retrieved context, aimed at the model."""

from __future__ import annotations

import re
from collections.abc import Iterator

import re2

from audit_proxy.policy.gates import Gate, Group, PatternScan

Span = tuple[int, int]

_VERBS = ("ignore", "disregard", "forget", "override", "bypass", "skip")
_QUALIFIERS = (
    "previous", "prior", "above", "earlier", "preceding", "former", "original", "system", "safety",
)  # fmt: skip
_OBJECTS = (
    "instructions?", "prompts?", "rules", "directions", "directives", "guidelines", "context",
    "messages?", "constraints",
)  # fmt: skip
_REVEAL = ("reveal", "print", "repeat", "output")


def _either(words: tuple[str, ...]) -> str:
    return "|".join(words)


def _needles(words: tuple[str, ...]) -> Group:
    """What each of `words` (a plural made optional by `s?`) always holds."""
    return tuple(w.removesuffix("s?") for w in words)


# Each way to phrase an override, with the words every match of it holds (one of each group).
_OVERRIDE_WAYS: tuple[tuple[str, tuple[Group, ...]], ...] = (
    (
        rf"\b(?:{_either(_VERBS)})\s+(?:all\s+|any\s+|every\s+)?(?:of\s+)?"
        rf"(?:the\s+|your\s+|my\s+)?(?:{_either(_QUALIFIERS)})\s+(?:{_either(_OBJECTS)})",
        (_VERBS, _QUALIFIERS, _needles(_OBJECTS)),
    ),
    (
        r"\b(?:new|updated|real)\s+(?:system\s+)?instructions\s*:",
        (("instructions",), ("new", "updated", "real")),
    ),
    (
        r"\byou\s+are\s+now\s+(?:in\s+)?"
        r"(?:developer\s+mode|DAN|jailbroken|unrestricted|an?\s+unfiltered)",
        (("jailbroken", "unrestricted", "unfiltered", "developer", "dan"), ("now",), ("you",)),
    ),
    (
        r"\bdo\s+not\s+(?:follow|obey)\s+(?:the\s+|your\s+)?(?:system|previous|original)\s+"
        r"(?:prompt|instructions?|rules)",
        (
            ("obey", "follow"),
            ("system", "previous", "original"),
            ("prompt", "instruction", "rules"),
        ),
    ),
    (
        rf"\b(?:{_either(_REVEAL)})\s+(?:the\s+|your\s+)?"
        r"(?:system\s+prompt|hidden\s+instructions)",
        (("hidden", "system"), ("prompt", "instructions"), _REVEAL),
    ),
)
_OVERRIDE = re.compile("(?i)" + "|".join(pattern for pattern, _ in _OVERRIDE_WAYS))
# Code is full of "skip", "context" and "message": the override pattern runs only where all the
# words of one way to phrase it occur.
OVERRIDE_GATE = Gate(tuple(needs for _, needs in _OVERRIDE_WAYS))

_ROLE = re.compile(
    r"<\|im_start\|>\s*(?:system|assistant)|<\|im_end\|>|<\|(?:system|assistant)\|>"
    r"|<\|start_header_id\|>\s*(?:system|assistant)|<<SYS>>|\[/?INST\]|<\|endoftext\|>"
    r"|(?im:^[ \t#/*>-]*(?:system|assistant)(?:\s+(?:prompt|message))?\s*:\s*"
    r"(?:you\s+(?:are|must|will|should)\b|ignore\b|from\s+now\s+on\b|act\s+as\b|disregard\b"
    r"|new\s+instructions\b))"
)

# Zero-width characters, bidi embedding/override/isolate controls, invisible operators, BOM;
# and the tag characters. (The characters themselves, not escapes: RE2 reads the same classes.)
_INVISIBLE_CLASS = "[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]+"
_TAGS_CLASS = "[\U000e0000-\U000e007f]+"


class _Pattern:
    """A pattern run by `re`, and in ASCII text by RE2: a DFA that scans 4 KB of code in 7 us
    where `re` takes some 150. There RE2's \\b is `re`'s, and _ASCII_SPACE is what `re`'s \\s
    matches; RE2 reads bytes (given a str, its wrapper maps every offset back, at twice the cost).
    """

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern
        self.in_ascii = re2.compile(pattern.pattern.replace(r"\s", _ASCII_SPACE).encode())

    def spans(self, text: str) -> Iterator[Span]:
        if text.isascii():
            found = self.in_ascii.finditer(text.encode())
        else:
            found = self.pattern.finditer(text)
        for m in found:
            yield m.span()


class _Runs:
    """Runs of the characters of a class, found by `re` only in text that RE2 says holds one:
    most non-ASCII text holds none, and `re` walks a class at some 7 ns a character (0.9 ms
    over 128 KiB)."""

    def __init__(self, char_class: str) -> None:
        self.pattern = re.compile(char_class)
        self.any = PatternScan([char_class])

    def spans(self, text: str) -> Iterator[Span]:
        if text.isascii() or not self.any.held(text):
            return
        for m in self.pattern.finditer(text):
            yield m.span()


_ASCII_SPACE = r"[\t\n\x0b\x0c\r\x1c-\x1f ]"
_OVERRIDE_FAST = _Pattern(_OVERRIDE)
_ROLE_FAST = _Pattern(_ROLE)
_INVISIBLE_RUNS = _Runs(_INVISIBLE_CLASS)
_TAG_RUNS = _Runs(_TAGS_CLASS)


def override_phrase(text: str) -> Iterator[Span]:
    """'Ignore previous instructions' and its kin (behind OVERRIDE_GATE in a policy)."""
    return _OVERRIDE_FAST.spans(text)


def role_directive(text: str) -> Iterator[Span]:
    """Chat-template tokens and `system:` directives smuggled into user content."""
    return _ROLE_FAST.spans(text)


def invisible_unicode(text: str) -> Iterator[Span]:
    """Runs of zero-width, bidi-control and other invisible characters."""
    return _INVISIBLE_RUNS.spans(text)


def unicode_tags(text: str) -> Iterator[Span]:
    """Runs of Unicode tag characters (U+E0000 to U+E007F), which can spell hidden ASCII text."""
    return _TAG_RUNS.spans(text)
