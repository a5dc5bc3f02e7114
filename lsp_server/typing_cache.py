"""Typing-through cache: when the user types into a suggestion on screen, answer without the model.

A suggestion S shown after prefix P (with suffix X) still stands when the document now reads
P + t before the cursor and X after it, and S starts with t: the answer is S[len(t):].
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class ShownSuggestion:
    prefix: str
    suffix: str
    text: str


class TypingCache:
    """The last few suggestions per document."""

    def __init__(self, per_document: int = 4, documents: int = 64) -> None:
        self._per_document = per_document
        self._documents = documents
        self._entries: OrderedDict[str, list[ShownSuggestion]] = OrderedDict()

    def remember(self, uri: str, prefix: str, suffix: str, text: str) -> None:
        shown = self._entries.pop(uri, [])
        shown.insert(0, ShownSuggestion(prefix, suffix, text))
        self._entries[uri] = shown[: self._per_document]
        while len(self._entries) > self._documents:
            self._entries.popitem(last=False)

    def lookup(self, uri: str, prefix: str, suffix: str) -> str | None:
        """The rest of a shown suggestion the user is typing through, if any."""
        for shown in self._entries.get(uri, []):
            if suffix != shown.suffix or not prefix.startswith(shown.prefix):
                continue
            typed = prefix[len(shown.prefix) :]
            if shown.text.startswith(typed) and len(typed) < len(shown.text):
                return shown.text[len(typed) :]
        return None

    def forget(self, uri: str) -> None:
        self._entries.pop(uri, None)
