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
# The same pattern in RE2, a DFA that scans 4 KB of code in 7 us where `re` takes some 150, for
# ASCII text: there RE2's \b is `re`'s, and this class is what `re`'s \s matches.
_ASCII_SPACE = r"[\t\n\x0b\x0c\r\x1c-\x1f ]"
_OVERRIDE_IN_ASCII = re2.compile(_OVERRIDE.pattern.replace(r"\s", _ASCII_SPACE).encode())
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
_ROLE_IN_ASCII = re2.compile(_ROLE.pattern.replace(r"\s", _ASCII_SPACE).encode())  # as above

# Zero-width characters, bidi embedding/override/isolate controls, invisible operators, BOM;
# and the tag characters. (The characters themselves, not escapes: RE2 reads the same classes.)
_INVISIBLE_CLASS = "[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]+"
_TAGS_CLASS = "[\U000e0000-\U000e007f]+"
_INVISIBLE = re.compile(_INVISIBLE_CLASS)
_TAGS = re.compile(_TAGS_CLASS)
# Whether a text holds any at all, in one RE2 pass: most non-ASCII text holds none, and `re`
# walks a class at some 7 ns a character (0.9 ms over 128 KiB).
_ANY_INVISIBLE = PatternScan([_INVISIBLE_CLASS])
_ANY_TAGS = PatternScan([_TAGS_CLASS])


def override_phrase(text: str) -> Iterator[Span]:
    """'Ignore previous instructions' and its kin (behind OVERRIDE_GATE in a policy)."""
    # (RE2 over bytes: given a str, its wrapper maps every offset back, at twice the cost)
    found = (
        _OVERRIDE_IN_ASCII.finditer(text.encode()) if text.isascii() else _OVERRIDE.finditer(text)
    )
    for m in found:
        yield m.span()


def role_directive(text: str) -> Iterator[Span]:
    """Chat-template tokens and `system:` directives smuggled into user content."""
    found = _ROLE_IN_ASCII.finditer(text.encode()) if text.isascii() else _ROLE.finditer(text)
    for m in found:
        yield m.span()


def invisible_unicode(text: str) -> Iterator[Span]:
    """Runs of zero-width, bidi-control and other invisible characters."""
    if text.isascii() or not _ANY_INVISIBLE.held(text):
        return
    for m in _INVISIBLE.finditer(text):
        yield m.span()


def unicode_tags(text: str) -> Iterator[Span]:
    """Runs of Unicode tag characters (U+E0000 to U+E007F), which can spell hidden ASCII text."""
    if text.isascii() or not _ANY_TAGS.held(text):
        return
    for m in _TAGS.finditer(text):
        yield m.span()
