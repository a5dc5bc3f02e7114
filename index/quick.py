"""The quick first stage of a cold build: every file searchable within seconds, coarsely.

A first build of a large tree takes tens of seconds, most of it tree-sitter parsing and FTS5
over code-aware tokens. Until it is done the quick index answers instead, over every file the
full index will hold (same discovery, same secret and binary checks):

- chunks are cut at definition lines found by one regular expression per language (line windows
  for other text), not by a parser;
- definitions come from the same expressions (name and kind; no qualified names);
- BM25 runs over the chunks' raw text through FTS5's own tokenizer: whole identifiers and words,
  no camelCase or snake_case parts.

It lives in the workspace's cache directory (`quick/`, 0700/0600) and is deleted once the full
index is committed. `QuickIndex` answers the same queries as `WorkspaceIndex`, so ranking takes
either.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from .chunker import Symbol
from .discovery import decode_or_skip, discover, display_path
from .languages import EXTENSIONS
from .prepare import FileJob, PreparedFile, prepare_all
from .queries import StoreQueries
from .store import FileRows, IndexStore, StoredChunk
from .tokens import lines_with_words

QUICK_DIR = "quick"
# The longest chunk, in lines; longer definitions continue in further chunks.
WINDOW_LINES = 60
WRITE_BATCH_FILES = 128

_EOL = r"(?=\n|\Z)"  # "$" without re.MULTILINE
_NOT_A_TYPE = r"(?!(?:return|new|else|throw|case|goto|delete|await|yield)\b)"
_PYTHON = r"^[ \t]*(?:async[ \t]+)?(?P<kind>def|class)[ \t]+(?P<name>[A-Za-z_]\w*)"
_JS = (
    r"^[ \t]*(?:export[ \t]+)?(?:default[ \t]+)?(?:declare[ \t]+)?(?:abstract[ \t]+)?"
    r"(?:async[ \t]+)?(?P<kind>function\*?|class|interface|enum|type)[ \t]+"
    r"(?P<name>[A-Za-z_$][\w$]*)"
    r"|^(?:export[ \t]+)?(?:const|let|var)[ \t]+(?P<variable>[A-Za-z_$][\w$]*)"
    r"|^[ \t]+(?:(?:static|async|get|set|public|private|protected|readonly)[ \t]+)*"
    r"(?P<method>[A-Za-z_$][\w$]*)[ \t]*\([^)\n]*\)[ \t]*(?::[^{\n]*)?\{[ \t]*" + _EOL
)
_GO = r"^(?P<kind>func|type)[ \t]+(?:\([^)\n]*\)[ \t]*)?(?P<name>[A-Za-z_]\w*)"
_RUST = (
    r"^[ \t]*(?:pub(?:\([^)\n]*\))?[ \t]+)?(?:async[ \t]+)?(?:unsafe[ \t]+)?"
    r"(?P<kind>fn|struct|enum|trait|mod|type|union)[ \t]+(?P<name>[A-Za-z_]\w*)"
)
_JAVA = (
    r"^[ \t]*(?:(?:public|private|protected|static|final|abstract|sealed|synchronized|native"
    r"|default)[ \t]+)*(?:(?P<kind>class|interface|enum|record)[ \t]+(?P<name>[A-Za-z_]\w*)"
    r"|" + _NOT_A_TYPE + r"[\w<>\[\],.?]+[ \t]+(?P<method>[A-Za-z_]\w*)[ \t]*\([^;\n]*"
    r"[{)][ \t]*" + _EOL + ")"
)
_C = (
    r"^(?:(?P<kind>struct|union|enum|class|namespace)[ \t]+(?P<name>[A-Za-z_]\w*)[^;\n]*"
    + _EOL
    + r"|"
    + _NOT_A_TYPE
    + r"[A-Za-z_][\w:<>,*& \t]*?[ \t*&]"
    r"(?P<method>[A-Za-z_][\w:~]*)[ \t]*\([^;\n]*" + _EOL + ")"
)
_SOURCES = {
    "python": _PYTHON,
    "javascript": _JS,
    "typescript": _JS,
    "tsx": _JS,
    "go": _GO,
    "rust": _RUST,
    "java": _JAVA,
    "c": _C,
    "cpp": _C,
}
# Each alternative's leading "^" becomes "\n" and the text is searched with a newline in front:
# about a third faster than re.MULTILINE's "^", which is tried at every position.
_PATTERNS: dict[str, re.Pattern[str]] = {
    name: re.compile(re.sub(r"(^|\|)\^", r"\1\\n", pattern)) for name, pattern in _SOURCES.items()
}
# Languages whose every definition line holds one of a few keywords: those lines are found by
# plain string search (3x faster than the regex pass) and each is checked by the pattern.
_KEYWORDS: dict[str, tuple[str, ...]] = {
    "python": ("def", "class"),
    "go": ("func", "type"),
    "rust": ("fn", "struct", "enum", "trait", "mod", "type", "union"),
}
_AT_LINE = {name: re.compile(re.sub(r"^\^", "", _SOURCES[name])) for name in _KEYWORDS}
_CLASS_KINDS = frozenset(
    {"class", "interface", "enum", "type", "struct", "union", "trait", "record", "namespace"}
)
_NOT_NAMES = frozenset({"if", "for", "while", "switch", "return", "catch", "else", "sizeof", "new"})


@dataclass(frozen=True)
class QuickDefinition:
    name: str
    kind: str
    line: int
    offset: int  # where its line starts in the text


def quick_language(path: str) -> str:
    dot = path.rfind(".")
    return EXTENSIONS.get(path[dot:].lower(), "text") if dot >= 0 else "text"


def _matches(language: str, text: str) -> Iterator[tuple[int, re.Match[str]]]:
    """(start of the line in `text`, match) for each definition line."""
    keywords = _KEYWORDS.get(language)
    if keywords is not None:
        at_line = _AT_LINE[language]
        for start in lines_with_words(text, keywords):
            if match := at_line.match(text, start):
                yield start, match
        return
    # A newline in front lets "\n" stand for "^"; match.start() is then the line's start.
    for match in _PATTERNS[language].finditer("\n" + text):
        yield match.start(), match


def quick_definitions(language: str, text: str) -> list[QuickDefinition]:
    """Definitions by regular expression, in file order; none for plain text."""
    if language not in _PATTERNS:
        return []
    out: list[QuickDefinition] = []
    line, last = 0, 0
    for line_start, match in _matches(language, text):
        line += text.count("\n", last, line_start)
        last = line_start
        groups = match.groupdict()
        name = groups.get("name") or groups.get("method") or groups.get("variable")
        if not name or name in _NOT_NAMES:
            continue
        keyword = (groups.get("kind") or "").rstrip("*")
        if keyword in _CLASS_KINDS:
            kind = "class"
        elif groups.get("variable"):
            kind = "variable"
        else:
            kind = "function"
        out.append(QuickDefinition(name, kind, line, line_start))
    return out


def quick_rows(
    key: str, language: str, text: str
) -> tuple[list[tuple[int, int, str, str, str]], list[str], list[tuple[str, str, str, int, int]]]:
    """Chunks cut at definition lines (at most WINDOW_LINES each), the text FTS5 indexes for
    each (path and body), and the symbols. Chunk texts are left empty: read from disk when
    asked for, so the build writes each file's text once (into FTS5, which keeps no copy)."""
    definitions = quick_definitions(language, text)
    cuts = {0: 0}
    for definition in definitions:
        cuts.setdefault(definition.line, definition.offset)
    named = {d.line: d for d in reversed(definitions)}
    boundaries = sorted(cuts.items())
    lines_total = text.count("\n") + (0 if text.endswith("\n") or not text else 1)
    boundaries.append((lines_total, len(text)))
    path_tokens = key.replace("/", " ").replace(".", " ")
    chunks: list[tuple[int, int, str, str, str]] = []
    tokens: list[str] = []
    chunk_of_line: dict[int, int] = {}
    for (first, offset), (stop, stop_offset) in pairwise(boundaries):
        while first < stop:
            last = min(first + WINDOW_LINES, stop) - 1
            end = (
                stop_offset
                if last == stop - 1
                else _offset_after_lines(text, offset, last - first + 1)
            )
            body = text[offset:end]
            if body and not body.isspace():
                found = named.get(first)
                chunk_of_line.setdefault(first, len(chunks))
                kind, name = (found.kind, found.name) if found else ("text", "")
                chunks.append((first, last, kind, name, ""))
                tokens.append(f"{path_tokens}\n{body}" if not tokens else body)
            first, offset = last + 1, end
    symbols = [
        (d.name, d.name, d.kind, d.line, chunk_of_line[d.line])
        for d in definitions
        if d.line in chunk_of_line
    ]
    return chunks, tokens, symbols


def _offset_after_lines(text: str, offset: int, lines: int) -> int:
    for _ in range(lines):
        newline = text.find("\n", offset)
        if newline < 0:
            return len(text)
        offset = newline + 1
    return offset


def prepare_quick(job: FileJob, _limits: object) -> PreparedFile:
    """Read, check and cut one file for the quick index (runs in the worker pool)."""
    try:
        data = Path(job.path).read_bytes()
    except OSError as exc:
        return PreparedFile(job.key, "", job.mtime_ns, skip_reason=f"unreadable ({exc.strerror})")
    text, reason = decode_or_skip(data)
    if reason is not None:
        return PreparedFile(job.key, "", job.mtime_ns, skip_reason=reason)
    language = quick_language(job.relpath)
    chunks, tokens, symbols = quick_rows(job.key, language, text)
    # No content hash: nothing is ever compared against the quick index.
    rows = FileRows(
        job.root, job.relpath, "", len(data), job.mtime_ns, language, chunks, tokens, symbols
    )
    return PreparedFile(job.key, "", job.mtime_ns, rows)


class QuickStore(IndexStore):
    """An `IndexStore` for a throwaway index: its FTS5 table keeps no copy of what it indexes
    (contentless), segments are not merged while loading, nothing is journaled or synced."""

    schema = IndexStore.schema.replace(
        "tokens, tokenize =", "tokens, content = '', tokenize ="
    ).replace("CREATE INDEX IF NOT EXISTS symbols_path ON symbols (path);", "")

    def _open(self, existed: bool, roots: list[str]) -> None:
        super()._open(existed, roots)
        for statement in (
            "PRAGMA journal_mode = OFF",
            "PRAGMA synchronous = OFF",
            "PRAGMA cache_size = -200000",
            "INSERT INTO chunk_tokens (chunk_tokens, rank) VALUES ('automerge', 0)",
            "INSERT INTO chunk_tokens (chunk_tokens, rank) VALUES ('crisismerge', 2000)",
        ):
            self._db.execute(statement)


class QuickIndex(StoreQueries):
    """Every file of a workspace, cut and searched coarsely; see the module's docstring."""

    def __init__(self, roots: list[Path], directory: Path, store: IndexStore) -> None:
        self.roots = roots
        self.directory = directory
        self._store: IndexStore | None = store
        self.files = 0
        self.seconds = 0.0

    @property
    def store(self) -> IndexStore:
        if self._store is None:
            raise RuntimeError("the quick index was discarded")
        return self._store

    @classmethod
    def build(
        cls,
        roots: list[Path],
        cache_dir: Path,
        workers: int,
        min_files: int = 0,
        stop: threading.Event | None = None,
    ) -> QuickIndex | None:
        """Discover, read and cut every file of `roots` into a fresh quick index; None when
        there are fewer than `min_files` (the full build is about as quick then). Setting `stop`
        ends it with `BuildStopped`, and the partial quick index is discarded."""
        began = time.perf_counter()
        roots = [root.resolve() for root in roots]
        found = discover(roots)
        if len(found.candidates) < min_files:
            return None
        directory = cache_dir / QUICK_DIR
        shutil.rmtree(directory, ignore_errors=True)
        store = QuickStore(directory, [str(root) for root in roots])
        quick = cls(roots, directory, store)
        jobs = [
            FileJob(
                display_path(roots, c.root, c.relpath),
                roots.index(c.root),
                c.relpath,
                str(c.path),
                c.mtime_ns,
                None,
            )
            for c in found.candidates
        ]
        store.begin()
        try:
            batch: list[tuple[str, FileRows]] = []
            for prepared in prepare_all(jobs, None, workers, prepare_quick, stop):
                if prepared.rows is None:
                    continue
                batch.append((prepared.key, prepared.rows))
                if len(batch) >= WRITE_BATCH_FILES:
                    store.put_rows(batch, replace=False)
                    batch = []
            store.put_rows(batch, replace=False)
        except BaseException:
            store.rollback()
            quick.discard()
            raise
        store.commit()
        quick.files = store.counts()[0]
        quick.seconds = time.perf_counter() - began
        return quick

    def chunks(self, ids: list[int]) -> dict[int, StoredChunk]:
        """Chunks by id, their text read from the files (the quick index stores none)."""
        return {ref.id: ref for ref in self._with_text(list(self.store.chunks(ids).values()))}

    def definitions(self, name: str) -> list[tuple[StoredChunk, Symbol]]:
        found = self.store.definitions(name)
        refs = {ref.id: ref for ref in self._with_text([ref for ref, _ in found])}
        return [(refs[ref.id], symbol) for ref, symbol in found]

    def lexical(
        self, tokens: list[str], k: int, exclude_path: str | None = None
    ) -> list[StoredChunk]:
        return self._with_text(super().lexical_spans(tokens, k, exclude_path))

    def _with_text(self, refs: list[StoredChunk]) -> list[StoredChunk]:
        lines_of: dict[str, list[str]] = {}
        out: list[StoredChunk] = []
        for ref in refs:
            if ref.path not in lines_of:
                disk = self.file_path(ref.path)
                try:
                    text = disk.read_text(encoding="utf-8") if disk is not None else ""
                except (OSError, UnicodeDecodeError):
                    text = ""
                # Lines as the build counted them: at "\n" only (form feeds stay inside a line).
                lines_of[ref.path] = text.split("\n")
            lines = lines_of[ref.path][ref.chunk.start_line : ref.chunk.end_line + 1]
            text = "\n".join(line.removesuffix("\r") for line in lines)
            chunk = dataclasses.replace(ref.chunk, text=text)
            out.append(dataclasses.replace(ref, chunk=chunk))
        return out

    @staticmethod
    def remove_leftover(cache_dir: Path) -> None:
        """Delete a quick index that a session ending mid-build left in `cache_dir`."""
        shutil.rmtree(cache_dir / QUICK_DIR, ignore_errors=True)

    def discard(self) -> None:
        """Close and delete the quick index (the full one has taken over)."""
        if self._store is not None:
            self._store.close()
            self._store = None
        shutil.rmtree(self.directory, ignore_errors=True)
