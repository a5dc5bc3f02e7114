"""What goes in the prompt: symbol, lexical and vector hits at the cursor, fused by RRF.

The identifier just before the cursor's "(" is the strongest signal: its definition is what the
model needs to fill the arguments. Other identifiers near the cursor add their definitions, BM25
over the lines before the cursor and, once the chunks are embedded, their nearest chunks by
embedding find the rest. The lists are fused with reciprocal rank
fusion; the current file's own text around the cursor is never repeated (the prompt has it).
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .chunker import Symbol
from .queries import StoreQueries
from .store import DefinitionSpan
from .tokens import identifiers, lines_with_words, tokenize
from .workspace import ChunkRef

if TYPE_CHECKING:
    from .semantic import SemanticIndex

RRF_K = 60
# The completion path's vector query: the complete lines above the cursor.
VECTOR_QUERY_LINES = 8
# Vector hits fetched beyond k, to make up for those in the current file.
VECTOR_EXTRA = 8
QUERY_LINES = 20
NEAR_LINES = 8
# Lines around the cursor that the prompt's prefix and suffix already carry.
OWN_REGION_BEFORE = 60
OWN_REGION_AFTER = 30
MAX_DEFINITIONS_PER_NAME = 6
# A definition scoring this much was named by an import or by the call's qualifier.
RESOLVED_SCORE = 3.0
_SELF = frozenset({"self", "cls", "this", "super"})
_NOISE = frozenset(keyword.kwlist) | frozenset(
    {"self", "cls", "this", "true", "false", "null", "None", "True", "False", "print", "len"}
)
_CALLEE = re.compile(r"(?:([A-Za-z_][A-Za-z0-9_]*)\s*(?:\.|::|->)\s*)?([A-Za-z_][A-Za-z0-9_]*)\s*$")
# Imports spread over lines: Python's `from x import (\n a,\n b)`, JS's `import {\n a } from "x"`.
_IMPORT_BLOCK = re.compile(
    r"^[ \t]*(?:from\s+[\w.]+\s+import\s*\([^)]*\)|import\s*\{[^}]*\}\s*from\s*['\"][^'\"]+['\"])",
    re.MULTILINE,
)
_TRAILING_CALL = re.compile(r"[\s(<\[{]*$")
_IMPORT_KEYWORDS = ("import", "require", "include", "use", "from")
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_./:-]*")
_MODULE_SEPARATORS = re.compile(r"[./:-]+")


@dataclass
class Snippet:
    """One retrieved chunk as the prompt (and the CLI) sees it."""

    path: str
    start_line: int
    end_line: int
    score: float
    sources: list[str]
    name: str
    kind: str
    text: str

    def as_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "start_line": self.start_line,
            "end_line": self.end_line,
            "score": round(self.score, 6),
            "sources": self.sources,
            "name": self.name,
            "kind": self.kind,
            "text": self.text,
        }


@dataclass
class _Fused:
    ref: ChunkRef
    score: float = 0.0
    sources: list[str] = field(default_factory=list)


def cursor_call(prefix_line: str) -> tuple[str | None, str | None]:
    """(qualifier, name) of the call being typed: `self.session.get(` -> ("session", "get")."""
    head = _TRAILING_CALL.sub("", prefix_line)
    match = _CALLEE.search(head)
    if match is None:
        return None, None
    return match.group(1), match.group(2)


def _import_lines(text: str) -> list[str]:
    """The lines (and multi-line import blocks, joined) that hold an import-like keyword.

    Found once per request: every name near the cursor looks its hints up in these lines.
    """
    lines = [" ".join(block.split()) for block in _IMPORT_BLOCK.findall(text)]
    for start in lines_with_words(text, _IMPORT_KEYWORDS):
        end = text.find("\n", start)
        lines.append(text[start : end if end >= 0 else len(text)])
    return lines


def _module_hints(import_lines: list[str], name: str) -> set[str]:
    """Module path parts named on the import lines that mention `name` (Python, JS, Go, ...)."""
    hints: set[str] = set()
    for line in import_lines:
        if name not in line:
            continue
        for module in _MODULE.findall(line):
            for part in _MODULE_SEPARATORS.split(module):
                if part and part != name:
                    hints.add(part.lower())
    return hints


def _path_parts(path: str) -> list[str]:
    parts = path.lower().split("/")
    parts[-1] = parts[-1].rsplit(".", 1)[0]
    return parts


def _definition_score(
    symbol: Symbol,
    path: str,
    qualifier: str | None,
    hints: set[str],
    current: str,
) -> float:
    score = 0.0
    parts = _path_parts(path)
    stem = parts[-1] if parts[-1] not in ("__init__", "index", "mod", "lib") else parts[-2:][0]
    scope = symbol.qualified.rsplit(".", 1)[0] if "." in symbol.qualified else ""
    if hints and (stem in hints or (len(parts) > 1 and parts[-2] in hints and stem in hints)):
        score += 4
    elif hints and any(part in hints for part in parts[:-1]):
        score += 1
    if qualifier and qualifier not in _SELF:
        if scope.rsplit(".", 1)[-1] == qualifier or qualifier.lower() == stem:
            score += 3
        elif not scope:
            score += 0.5
    elif qualifier in _SELF:
        score += 1 if scope else 0
    else:
        score += 1 if not scope else 0
        if path == current and not hints:
            score += 2
    if symbol.kind == "variable":
        score -= 0.5
    if "test" in path.lower() and "test" not in current.lower():
        score -= 1
    return score


def _own_region(path: str, start: int, end: int, current: str | None, line: int) -> bool:
    return path == current and start <= line + OWN_REGION_AFTER and end >= line - OWN_REGION_BEFORE


def _scored_definitions(
    index: StoreQueries,
    name: str,
    qualifier: str | None,
    hints: set[str],
    current: str | None,
    line: int,
    at_most: int = -1,
) -> list[tuple[float, ChunkRef]]:
    """The definitions of `name`, scored, best first; none when there are more than `at_most`."""
    spans = index.definition_spans(name, -1 if at_most < 0 else at_most + 1)
    best = _best_spans(spans, qualifier, hints, current, line, at_most)
    chunks = index.chunks([chunk_id for _, chunk_id in best])
    return [(score, chunks[chunk_id]) for score, chunk_id in best if chunk_id in chunks]


def _best_spans(
    spans: list[DefinitionSpan],
    qualifier: str | None,
    hints: set[str],
    current: str | None,
    line: int,
    at_most: int = -1,
) -> list[tuple[float, int]]:
    """(score, chunk id) of the best definitions among `spans`; none when more than `at_most`."""
    if 0 <= at_most < len(spans):
        return []
    scored: dict[int, tuple[float, int]] = {}
    for span in spans:
        if _own_region(span.path, span.start_line, span.end_line, current, line):
            continue
        score = _definition_score(span.symbol, span.path, qualifier, hints, current or "")
        # Among equals the longer chunk wins: an implementation over its `@overload` stubs.
        size = span.end_line - span.start_line
        scored[span.chunk_id] = max((score, size), scored.get(span.chunk_id, (score, size)))
    best = sorted(scored.items(), key=lambda item: (-item[1][0], -item[1][1], item[0]))
    return [(score, chunk_id) for chunk_id, (score, _) in best[:MAX_DEFINITIONS_PER_NAME]]


def _nearby_definitions(
    index: StoreQueries, names: list[str], import_lines: list[str], current: str, line: int
) -> list[ChunkRef]:
    """The best definition of each name near the cursor (names with more than 3 are noise),
    looked up in one query for all the names."""
    at_most = 3
    spans = index.definition_spans_many(names, at_most + 1)
    picks: list[int] = []
    for name in names:
        hints = _module_hints(import_lines, name)
        best = _best_spans(spans.get(name, []), None, hints, current, line, at_most)
        if best:
            picks.append(best[0][1])
    chunks = index.chunks(picks)
    return [chunks[chunk_id] for chunk_id in picks if chunk_id in chunks]


def _fuse(lists: Iterable[tuple[str, float, list[ChunkRef]]]) -> list[_Fused]:
    fused: dict[int, _Fused] = {}
    for source, weight, refs in lists:
        for rank, ref in enumerate(refs, 1):
            entry = fused.setdefault(ref.id, _Fused(ref))
            entry.score += weight / (RRF_K + rank)
            if source not in entry.sources:
                entry.sources.append(source)
    return sorted(fused.values(), key=lambda entry: (-entry.score, entry.ref.id))


def _dedupe(index: StoreQueries, entries: list[_Fused], k: int) -> list[Snippet]:
    out: list[Snippet] = []
    kept: list[_Fused] = []
    for entry in entries:
        chunk = entry.ref.chunk
        if any(
            s.path == entry.ref.path
            and s.start_line <= chunk.end_line
            and s.end_line >= chunk.start_line
            for s in out
        ):
            continue
        kept.append(entry)
        out.append(
            Snippet(
                entry.ref.path,
                chunk.start_line,
                chunk.end_line,
                entry.score,
                entry.sources,
                chunk.name,
                chunk.kind,
                chunk.text,
            )
        )
        if len(out) >= k:
            break
    # Lexical and vector hits come without text (most are dropped here); read the kept ones' now.
    missing = [entry.ref.id for entry in kept if not entry.ref.chunk.text]
    if missing:
        texts = index.chunks(missing)
        for snippet, entry in zip(out, kept, strict=True):
            if entry.ref.id in texts and not snippet.text:
                snippet.text = texts[entry.ref.id].chunk.text
    return out


def vector_query(lines: list[str], line: int) -> str:
    """The completion path's vector query for a cursor on `line`: the complete lines above it."""
    return "\n".join(lines[max(0, line - VECTOR_QUERY_LINES) : line])


def _vector_hits(
    index: StoreQueries, vectors: SemanticIndex | None, query: str, k: int, path: str | None
) -> list[ChunkRef]:
    """Chunks nearest to `query` by embedding, outside `path` (the file being edited)."""
    if vectors is None:
        return []
    ids = vectors.search(query, k + VECTOR_EXTRA)
    found = index.chunk_spans(ids)
    refs = [found[chunk_id] for chunk_id in ids if chunk_id in found]
    return [ref for ref in refs if ref.path != path][:k]


def context(
    index: StoreQueries,
    path: str,
    text: str,
    line: int,
    col: int,
    k: int,
    vectors: SemanticIndex | None = None,
) -> list[Snippet]:
    """The snippets a completion at `path` (stored path), `line`:`col` (0-based) would send.

    With `vectors`, the complete lines above the cursor are also embedded (so keystrokes within
    a line reuse one query vector) and their nearest chunks join the fusion."""
    lines = text.splitlines() or [""]
    line = max(0, min(line, len(lines) - 1))
    semantic_query = vector_query(lines, line)
    if vectors is not None:
        vectors.prefetch(semantic_query)  # embeds while symbols and BM25 are looked up
    current_line = lines[line][:col]
    before = [*lines[max(0, line - QUERY_LINES + 1) : line], current_line]
    qualifier, callee = cursor_call(current_line)
    lists: list[tuple[str, float, list[ChunkRef]]] = []
    import_lines = _import_lines(text)
    if callee and callee not in _NOISE:
        named = qualifier if qualifier and qualifier not in _SELF else callee
        hints = _module_hints(import_lines, named)
        if qualifier and qualifier not in _SELF:
            hints |= _module_hints(import_lines, callee)
        scored = _scored_definitions(index, callee, qualifier, hints, path, line)
        lists.append(("symbol", 3.0, [ref for _, ref in scored]))
        # Definitions the imports or the qualifier resolve to outrank any amount of lexical overlap.
        if scored and scored[0][0] >= RESOLVED_SCORE:
            top = scored[0][0]
            lists.append(("resolved", 3.0, [ref for score, ref in scored if score == top]))
    names: list[str] = []
    seen = {callee}
    near_text = "\n".join([*lines[max(0, line - NEAR_LINES + 1) : line], current_line])
    for name in reversed(identifiers(near_text)):
        if name in seen or name in _NOISE or len(name) < 3:
            continue
        seen.add(name)
        names.append(name)
    near = _nearby_definitions(index, names, import_lines, path, line)
    if near:
        lists.append(("nearby", 1.0, near))
    query = tokenize("\n".join(before))
    lexical = index.lexical_spans(query, k * 8 + 20, exclude_path=path)
    lists.append(("lexical", 1.0, lexical))
    semantic = _vector_hits(index, vectors, semantic_query, k * 2, path)
    if semantic:
        lists.append(("vector", 1.0, semantic))
    return _dedupe(index, _fuse(lists), k)


def search(
    index: StoreQueries, query: str, k: int, vectors: SemanticIndex | None = None
) -> list[Snippet]:
    """Definitions named in the query, BM25 over the chunks and, with `vectors`, the nearest
    chunks by embedding, fused."""
    lists: list[tuple[str, float, list[ChunkRef]]] = []
    named: list[ChunkRef] = []
    for name in dict.fromkeys(identifiers(query)):
        named.extend(ref for ref, _ in index.definitions(name)[:MAX_DEFINITIONS_PER_NAME])
    if named:
        lists.append(("symbol", 2.0, named))
    lexical = index.lexical_spans(tokenize(query), k * 4 + 10)
    lists.append(("lexical", 1.0, lexical))
    semantic = _vector_hits(index, vectors, query, k * 4, None)
    if semantic:
        lists.append(("vector", 1.0, semantic))
    return _dedupe(index, _fuse(lists), k)
