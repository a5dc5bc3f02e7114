"""Lexical search terms: code-aware tokens turned into an SQLite FTS5 query (ranked by BM25)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from .tokens import tokenize_joined

MAX_QUERY_TERMS = 64
_SAFE = re.compile(r"^[a-z0-9_]+$")


def document_tokens(path: str, text: str) -> str:
    """What FTS5 indexes for a chunk: its file path's and its text's tokens, space-joined."""
    return tokenize_joined(f"{path}\n{text}")


def fts_query(tokens: Iterable[str]) -> str:
    """An FTS5 MATCH expression that ORs the distinct tokens (the last ones, the nearest, kept)."""
    distinct = list(dict.fromkeys(t.lower() for t in tokens if _SAFE.match(t.lower())))
    distinct = distinct[-MAX_QUERY_TERMS:]
    return " OR ".join(f'"{term}"' for term in distinct)
