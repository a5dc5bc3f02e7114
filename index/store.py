"""The on-disk index: one SQLite database per workspace in a private cache directory.

Files (with content hashes and stat), chunks, the definitions table, an FTS5 table of chunk
tokens and the directory hashes of the Merkle tree (see merkle_tree.py) all live in one database,
so a restart answers queries without rebuilding anything in memory and an update touches only one
file's rows. Chunk ids come from a counter kept in `meta` and are never reused, so whatever mirrors
the chunks (a vector index) can follow the `ChunkChanges` of each commit or diff id sets. The
directory is 0700 and the database 0600 (chunks hold source code). A database that cannot be read
(truncated, overwritten, another format) raises `CorruptIndex`; the caller deletes it and rebuilds.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .chunker import Chunk, Symbol
from .lexical import fts_query

FORMAT = "5"
# Query terms in more than this share of chunks are dropped; at most MAX_TERMS rarest are kept.
COMMON_TERM_FRACTION = 0.01
MAX_TERMS = 8
# Definition lists at least this long are cached until the next commit, up to this many spans.
SPAN_CACHE_MIN = 64
SPAN_CACHE_BUDGET = 200_000
_TERM = re.compile(r"^[a-z0-9_]+$")
INDEX_FILE = "index.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, root INTEGER NOT NULL, relpath TEXT NOT NULL, sha256 TEXT NOT NULL,
    size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, language TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY, path TEXT NOT NULL, start_line INTEGER NOT NULL,
    end_line INTEGER NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL, text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_path ON chunks (path);
CREATE TABLE IF NOT EXISTS symbols (
    name TEXT NOT NULL, qualified TEXT NOT NULL, kind TEXT NOT NULL, line INTEGER NOT NULL,
    chunk_id INTEGER NOT NULL, path TEXT NOT NULL, ordinal INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS symbols_name ON symbols (name, chunk_id);
CREATE INDEX IF NOT EXISTS symbols_path ON symbols (path);
CREATE TABLE IF NOT EXISTS skipped (path TEXT PRIMARY KEY, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dirs (path TEXT PRIMARY KEY, hash TEXT NOT NULL);
CREATE VIRTUAL TABLE IF NOT EXISTS chunk_tokens USING fts5(
    tokens, tokenize = "unicode61 tokenchars '_'"
);
CREATE VIRTUAL TABLE IF NOT EXISTS chunk_vocab USING fts5vocab(chunk_tokens, 'row');
"""


_LEXICAL = (
    "SELECT c.id, c.path, c.start_line, c.end_line, c.kind, c.name, {text}, t.score"
    " FROM (SELECT rowid, bm25(chunk_tokens) AS score FROM chunk_tokens"
    "       WHERE chunk_tokens MATCH ? ORDER BY score LIMIT ?) t"
    " JOIN chunks c ON c.id = t.rowid WHERE c.path IS NOT ? ORDER BY t.score, c.id LIMIT ?"
)
_SPANS_OF_ONE_NAME = (
    "SELECT * FROM (SELECT c.id, c.path, c.start_line, c.end_line, s.name, s.qualified, s.kind,"
    " s.line, s.ordinal FROM symbols s JOIN chunks c ON c.id = s.chunk_id WHERE s.name = ?"
    " ORDER BY s.chunk_id LIMIT ?)"
)
_LEXICAL_WITH_TEXT = _LEXICAL.format(text="c.text")
_LEXICAL_WITHOUT_TEXT = _LEXICAL.format(text="''")


class CorruptIndex(Exception):
    """The stored index cannot be read; it will be rebuilt."""


@dataclass
class FileRecord:
    """One indexed file: where it is, its content hash and stat, its chunks and definitions."""

    root: int
    relpath: str
    sha256: str
    size: int
    mtime_ns: int
    language: str
    chunks: list[Chunk] = field(default_factory=list)
    symbols: list[Symbol] = field(default_factory=list)


@dataclass(frozen=True)
class FileRows:
    """One file's rows as plain tuples (cheap to send back from a worker process).

    `chunks` are (start_line, end_line, kind, name, text); `tokens` one FTS string per chunk;
    `symbols` are (name, qualified, kind, line, index of the chunk in `chunks`).
    """

    root: int
    relpath: str
    sha256: str
    size: int
    mtime_ns: int
    language: str
    chunks: list[tuple[int, int, str, str, str]]
    tokens: list[str]
    symbols: list[tuple[str, str, str, int, int]]

    @classmethod
    def of(cls, record: FileRecord, tokens: list[str]) -> FileRows:
        return cls(
            record.root,
            record.relpath,
            record.sha256,
            record.size,
            record.mtime_ns,
            record.language,
            [(c.start_line, c.end_line, c.kind, c.name, c.text) for c in record.chunks],
            tokens,
            [(s.name, s.qualified, s.kind, s.line, s.chunk) for s in record.symbols],
        )


@dataclass(frozen=True)
class FileStat:
    """What a refresh compares against the disk."""

    sha256: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class StoredChunk:
    """A chunk with its database id and file."""

    id: int
    path: str
    chunk: Chunk


@dataclass(frozen=True)
class DefinitionSpan:
    """A definition and its chunk's place, cheap to rank before any text is read."""

    chunk_id: int
    path: str
    start_line: int
    end_line: int
    symbol: Symbol


@dataclass(frozen=True)
class ChunkChanges:
    """The chunk ids one transaction added and removed; ids are never reused."""

    added: list[int] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed)


def cache_root() -> Path:
    """Where per-workspace index directories live: `$XDG_CACHE_HOME/bastion/index`."""
    override = os.environ.get("BASTION_INDEX_CACHE")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bastion" / "index"


def workspace_dir(roots: list[Path]) -> Path:
    """The cache directory of a workspace, named by a hash of its resolved roots."""
    key = "\0".join(str(root.resolve()) for root in roots)
    return cache_root() / hashlib.sha256(key.encode("utf-8")).hexdigest()[:24]


def _private_dir(path: Path) -> None:
    if not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)


class IndexStore:
    """The database of one workspace; every write happens inside `commit()` boundaries."""

    schema = _SCHEMA

    def __init__(self, directory: Path, roots: list[str]) -> None:
        _private_dir(directory)
        self.path = directory / INDEX_FILE
        existed = self.path.exists()
        if not existed:
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        os.chmod(self.path, 0o600)
        self._db = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30
        )
        self._frequencies: dict[str, int] = {}
        self._count: int | None = None
        self._span_cache: dict[tuple[str, int], list[DefinitionSpan]] = {}
        self._span_cache_size = 0
        # Chunk ids are never reused, so whatever follows the index (vectors) can diff id sets.
        self._next_id = 1
        self._added: list[int] = []
        self._removed: list[int] = []
        try:
            self._open(existed, roots)
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise CorruptIndex(f"{self.path}: {exc}") from exc
        except CorruptIndex:
            self._db.close()
            raise

    def _open(self, existed: bool, roots: list[str]) -> None:
        db = self._db
        if existed:
            check = db.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise CorruptIndex(f"{self.path}: integrity check failed ({check})")
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
            if "meta" not in tables:
                raise CorruptIndex(f"{self.path}: not a Bastion index")
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            if meta.get("format") != FORMAT:
                raise CorruptIndex(f"{self.path}: format {meta.get('format')!r}, not {FORMAT}")
            if meta.get("roots") != "\0".join(roots):
                raise CorruptIndex(f"{self.path}: written for other roots")
            self._next_id = int(meta.get("next_chunk_id", "1"))
            return
        db.execute("PRAGMA journal_mode = DELETE")
        db.executescript(self.schema)
        db.executemany(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)",
            [("format", FORMAT), ("roots", "\0".join(roots)), ("next_chunk_id", "1")],
        )

    def close(self) -> None:
        self._db.close()

    def begin(self) -> None:
        self._db.execute("BEGIN")
        self._added.clear()
        self._removed.clear()

    def commit(self) -> ChunkChanges:
        """Commit the transaction; the chunks it added and removed."""
        self._db.execute(
            "UPDATE meta SET value = ? WHERE key = 'next_chunk_id'", (str(self._next_id),)
        )
        self._db.execute("COMMIT")
        self._count = None
        self._forget_spans()
        added, removed = self._added, self._removed
        self._added, self._removed = [], []
        # A chunk both added and removed in one transaction was never seen outside it.
        new, gone = set(added), set(removed)
        return ChunkChanges(
            [i for i in added if i not in gone], [i for i in removed if i not in new]
        )

    def rollback(self) -> None:
        self._db.execute("ROLLBACK")
        row = self._db.execute("SELECT value FROM meta WHERE key = 'next_chunk_id'").fetchone()
        self._next_id = int(row[0]) if row else 1
        self._count = None
        self._forget_spans()
        self._added.clear()
        self._removed.clear()

    # -- writes ------------------------------------------------------------------------------

    def put_file(self, path: str, record: FileRecord, tokens: Iterable[str]) -> None:
        """Replace one file's rows; `tokens` holds one space-joined token string per chunk."""
        self.put_files([(path, record, list(tokens))])

    def put_files(
        self, items: Sequence[tuple[str, FileRecord, list[str]]], replace: bool = True
    ) -> None:
        """Write many files' rows; see `put_rows`."""
        self.put_rows(
            [(path, FileRows.of(record, tokens)) for path, record, tokens in items], replace
        )

    def put_rows(self, items: Sequence[tuple[str, FileRows]], replace: bool = True) -> None:
        """Write many files' rows in one statement per table; `replace=False` skips the deletes
        (the caller knows these paths have no rows, as in a first build)."""
        files: list[tuple[object, ...]] = []
        chunks: list[tuple[object, ...]] = []
        tokens: list[tuple[int, str]] = []
        symbols: list[tuple[object, ...]] = []
        next_id = self._next_id
        for path, rows in items:
            if replace:
                self.delete_file(path)
            files.append(
                (path, rows.root, rows.relpath, rows.sha256, rows.size, rows.mtime_ns,
                 rows.language)
            )  # fmt: skip
            count = len(rows.chunks)
            if len(rows.tokens) != count:
                raise ValueError(f"{path}: {len(rows.tokens)} token strings for {count} chunks")
            first = next_id
            chunks.extend((first + n, path, *chunk) for n, chunk in enumerate(rows.chunks))
            tokens.extend(zip(range(first, first + count), rows.tokens, strict=True))
            next_id += count
            symbols.extend(
                (name, qualified, kind, line, first + chunk, path, chunk)
                for name, qualified, kind, line, chunk in rows.symbols
                if 0 <= chunk < count
            )
        db = self._db
        db.executemany("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?)", files)
        db.executemany("INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?)", chunks)
        db.executemany("INSERT INTO chunk_tokens (rowid, tokens) VALUES (?, ?)", tokens)
        db.executemany("INSERT INTO symbols VALUES (?, ?, ?, ?, ?, ?, ?)", symbols)
        self._added.extend(range(self._next_id, next_id))
        self._next_id = next_id

    def touch(self, path: str, mtime_ns: int) -> None:
        self._db.execute("UPDATE files SET mtime_ns = ? WHERE path = ?", (mtime_ns, path))

    def delete_file(self, path: str) -> bool:
        """Forget one file's rows; True when there were any."""
        db = self._db
        ids = [row[0] for row in db.execute("SELECT id FROM chunks WHERE path = ?", (path,))]
        db.executemany("DELETE FROM chunk_tokens WHERE rowid = ?", [(i,) for i in ids])
        self._removed.extend(ids)
        db.execute("DELETE FROM chunks WHERE path = ?", (path,))
        db.execute("DELETE FROM symbols WHERE path = ?", (path,))
        return db.execute("DELETE FROM files WHERE path = ?", (path,)).rowcount > 0

    def set_skipped(self, skipped: dict[str, str]) -> None:
        self._db.execute("DELETE FROM skipped")
        self._db.executemany("INSERT INTO skipped VALUES (?, ?)", sorted(skipped.items()))

    def skip(self, path: str, reason: str | None) -> None:
        if reason is None:
            self._db.execute("DELETE FROM skipped WHERE path = ?", (path,))
        else:
            self._db.execute("INSERT OR REPLACE INTO skipped VALUES (?, ?)", (path, reason))

    def update_directory_hashes(self, changed: Mapping[str, str | None]) -> None:
        """Store new directory hashes; None removes a directory that no longer holds files."""
        db = self._db
        db.executemany(
            "DELETE FROM dirs WHERE path = ?", [(p,) for p, h in changed.items() if h is None]
        )
        db.executemany(
            "INSERT OR REPLACE INTO dirs VALUES (?, ?)",
            [(p, h) for p, h in changed.items() if h is not None],
        )

    # -- reads -------------------------------------------------------------------------------

    def directory_hashes(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT path, hash FROM dirs").fetchall())

    def chunk_ids(self) -> set[int]:
        """Every stored chunk id (ids are never reused)."""
        return {row[0] for row in self._db.execute("SELECT id FROM chunks")}

    def file_stats(self) -> dict[str, FileStat]:
        rows = self._db.execute("SELECT path, sha256, size, mtime_ns FROM files")
        return {path: FileStat(sha, size, mtime) for path, sha, size, mtime in rows}

    def file_location(self, path: str) -> tuple[int, str] | None:
        row = self._db.execute("SELECT root, relpath FROM files WHERE path = ?", (path,)).fetchone()
        return (int(row[0]), str(row[1])) if row else None

    def paths(self) -> list[str]:
        return [row[0] for row in self._db.execute("SELECT path FROM files ORDER BY path")]

    def skipped(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT path, reason FROM skipped ORDER BY path").fetchall())

    def counts(self) -> tuple[int, int, int]:
        db = self._db
        files = db.execute("SELECT count(*) FROM files").fetchone()[0]
        chunks = db.execute("SELECT count(*) FROM chunks").fetchone()[0]
        symbols = db.execute("SELECT count(*) FROM symbols").fetchone()[0]
        return int(files), int(chunks), int(symbols)

    def definitions(self, name: str) -> list[tuple[StoredChunk, Symbol]]:
        """Every definition of `name` with its chunk."""
        found = self.definition_spans(name)
        chunks = self.chunks([span.chunk_id for span in found])
        return [(chunks[span.chunk_id], span.symbol) for span in found]

    def definition_spans(self, name: str, limit: int = -1) -> list[DefinitionSpan]:
        """Definitions of `name` (all, or the first `limit`) with where their chunks are.

        Long answers (`__init__`, `get`: thousands of rows, ~10 ms to read) are kept until the
        next commit, so a name that comes back keystroke after keystroke is read once.
        """
        cached = self._span_cache.get((name, limit))
        if cached is not None:
            return list(cached)
        rows = self._db.execute(
            "SELECT c.id, c.path, c.start_line, c.end_line, s.name, s.qualified, s.kind, s.line,"
            " s.ordinal FROM symbols s JOIN chunks c ON c.id = s.chunk_id WHERE s.name = ?"
            " ORDER BY s.chunk_id LIMIT ?",
            (name, limit),
        )
        spans = [
            DefinitionSpan(r[0], r[1], r[2], r[3], Symbol(r[4], r[5], r[6], r[7], r[8]))
            for r in rows
        ]
        if len(spans) >= SPAN_CACHE_MIN:
            if self._span_cache_size + len(spans) > SPAN_CACHE_BUDGET:
                self._forget_spans()
            self._span_cache[(name, limit)] = list(spans)
            self._span_cache_size += len(spans)
        return spans

    def _forget_spans(self) -> None:
        self._span_cache.clear()
        self._span_cache_size = 0

    def definition_spans_many(
        self, names: list[str], limit: int
    ) -> dict[str, list[DefinitionSpan]]:
        """The first `limit` definitions of each name, in one statement per 100 names."""
        out: dict[str, list[DefinitionSpan]] = {}
        for start in range(0, len(names), 100):
            batch = names[start : start + 100]
            query = " UNION ALL ".join([_SPANS_OF_ONE_NAME] * len(batch))
            args = [value for name in batch for value in (name, limit)]
            for r in self._db.execute(query, args):
                span = DefinitionSpan(r[0], r[1], r[2], r[3], Symbol(r[4], r[5], r[6], r[7], r[8]))
                out.setdefault(r[4], []).append(span)
        return out

    def chunks(self, ids: list[int], with_text: bool = True) -> dict[int, StoredChunk]:
        """Chunks by id; without `with_text` their text is left empty (read the kept ones later)."""
        out: dict[int, StoredChunk] = {}
        text = "text" if with_text else "''"
        for start in range(0, len(ids), 500):
            batch = ids[start : start + 500]
            marks = ",".join("?" * len(batch))
            query = (
                f"SELECT id, path, start_line, end_line, kind, name, {text}"  # noqa: S608
                f" FROM chunks WHERE id IN ({marks})"
            )
            for r in self._db.execute(query, batch):
                out[r[0]] = StoredChunk(r[0], r[1], Chunk(r[2], r[3], r[4], r[5], r[6]))
        return out

    def _chunk_count(self) -> int:
        if self._count is None:
            self._count = int(self._db.execute("SELECT count(*) FROM chunks").fetchone()[0])
        return self._count

    def document_frequencies(self, terms: list[str]) -> dict[str, int]:
        """How many chunks hold each term (terms absent from the index are left out)."""
        missing = [term for term in terms if term not in self._frequencies]
        if missing:
            marks = ",".join("?" * len(missing))
            query = f"SELECT term, doc FROM chunk_vocab WHERE term IN ({marks})"  # noqa: S608
            found = dict(self._db.execute(query, missing).fetchall())
            # Cached for the life of the store: frequencies only steer which terms are dropped,
            # so one edited file making them a little stale does not matter.
            if len(self._frequencies) > 500_000:
                self._frequencies.clear()
            for term in missing:
                self._frequencies[term] = int(found.get(term, 0))
        return {term: self._frequencies[term] for term in terms if self._frequencies[term]}

    def lexical(
        self,
        tokens: Iterable[str],
        k: int,
        exclude_path: str | None = None,
        with_text: bool = True,
    ) -> list[tuple[StoredChunk, float]]:
        """The `k` best chunks by FTS5's BM25 (higher is better here), best first; without
        `with_text` the chunks' text is left empty (read the few that are kept with `chunks`).

        Terms found in more than a few percent of chunks are dropped first: they barely move
        BM25 and make FTS5 score most of the index.
        """
        terms = list(dict.fromkeys(t.lower() for t in tokens if _TERM.match(t.lower())))
        if not terms:
            return []
        frequencies = self.document_frequencies(terms)
        limit = max(50, int(self._chunk_count() * COMMON_TERM_FRACTION))
        kept = sorted((df, term) for term, df in frequencies.items() if df <= limit)
        match = fts_query(term for _, term in kept[:MAX_TERMS])
        if not match:
            return []
        db = self._db
        # The excluded file is filtered after the join (reading a path per match inside FTS5
        # costs more); asking FTS5 for as many more rows as that file has chunks keeps k exact.
        excluded = 0
        if exclude_path is not None:
            excluded = db.execute(
                "SELECT count(*) FROM chunks WHERE path = ?", (exclude_path,)
            ).fetchone()[0]
        rows = db.execute(
            _LEXICAL_WITH_TEXT if with_text else _LEXICAL_WITHOUT_TEXT,
            (match, k + excluded, exclude_path, k),
        )
        return [
            (StoredChunk(r[0], r[1], Chunk(r[2], r[3], r[4], r[5], r[6])), -float(r[7]))
            for r in rows
        ]
