"""Injection guards: instructions hidden in code or retrieved context, aimed at the model."""

from __future__ import annotations

import re
from collections.abc import Iterator

Span = tuple[int, int]

_OVERRIDE = re.compile(
    r"(?i)\b(?:ignore|disregard|forget|override|bypass|skip)\s+(?:all\s+|any\s+|every\s+)?"
    r"(?:of\s+)?(?:the\s+|your\s+|my\s+)?(?:previous|prior|above|earlier|preceding|former"
    r"|original|system|safety)\s+(?:instructions?|prompts?|rules|directions|directives"
    r"|guidelines|context|messages?|constraints)"
    r"|\b(?:new|updated|real)\s+(?:system\s+)?instructions\s*:"
    r"|\byou\s+are\s+now\s+(?:in\s+)?(?:developer\s+mode|DAN|jailbroken|unrestricted|an?\s+unfiltered)"
    r"|\bdo\s+not\s+(?:follow|obey)\s+(?:the\s+|your\s+)?(?:system|previous|original)\s+"
    r"(?:prompt|instructions?|rules)"
    r"|\b(?:reveal|print|repeat|output)\s+(?:the\s+|your\s+)?(?:system\s+prompt|hidden\s+instructions)"
)
_ROLE = re.compile(
    r"<\|im_start\|>\s*(?:system|assistant)|<\|im_end\|>|<\|(?:system|assistant)\|>"
    r"|<\|start_header_id\|>\s*(?:system|assistant)|<<SYS>>|\[/?INST\]|<\|endoftext\|>"
    r"|(?im:^[ \t#/*>-]*(?:system|assistant)(?:\s+(?:prompt|message))?\s*:\s*"
    r"(?:you\s+(?:are|must|will|should)\b|ignore\b|from\s+now\s+on\b|act\s+as\b|disregard\b"
    r"|new\s+instructions\b))"
)
# Zero-width characters, bidi embedding/override/isolate controls, invisible operators, BOM.
_INVISIBLE = re.compile(
    r"[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]+"
)
_TAGS = re.compile(r"[\U000e0000-\U000e007f]+")


# One of these occurs in every override phrase; most code has none of them.
_OVERRIDE_NEEDLES = (
    "instruction",
    "prompt",
    "rules",
    "direction",
    "guideline",
    "constraint",
    "context",
    "message",
    "you are now",
)
_OVERRIDE_VERBS = ("ignore", "disregard", "forget", "override", "bypass", "skip", "follow", "obey")


def override_phrase(text: str) -> Iterator[Span]:
    """'Ignore previous instructions' and its kin."""
    lowered = text.lower()
    if not any(n in lowered for n in _OVERRIDE_NEEDLES):
        return
    if "you are now" not in lowered and not any(
        v in lowered for v in (*_OVERRIDE_VERBS, "instructions", "system prompt")
    ):
        return
    for m in _OVERRIDE.finditer(text):
        yield m.span()


def role_directive(text: str) -> Iterator[Span]:
    """Chat-template tokens and `system:` directives smuggled into user content."""
    for m in _ROLE.finditer(text):
        yield m.span()


def invisible_unicode(text: str) -> Iterator[Span]:
    """Runs of zero-width, bidi-control and other invisible characters."""
    if text.isascii():
        return
    for m in _INVISIBLE.finditer(text):
        yield m.span()


def unicode_tags(text: str) -> Iterator[Span]:
    """Runs of Unicode tag characters (U+E0000 to U+E007F), which can spell hidden ASCII text."""
    if text.isascii():
        return
    for m in _TAGS.finditer(text):
        yield m.span()
