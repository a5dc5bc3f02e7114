"""The on-disk index: one SQLite database per workspace in a private cache directory.

Files (with content hashes and stat), chunks, the definitions table and an FTS5 table of chunk
tokens all live in one database, so a restart answers queries without rebuilding anything in
memory and an update touches only one file's rows. The directory is 0700 and the database 0600
(chunks hold source code). A database that cannot be read (truncated, overwritten, another format)
raises `CorruptIndex`; the caller deletes it and rebuilds.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .chunker import Chunk, Symbol
from .lexical import fts_query

FORMAT = "3"
# Query terms in more than this share of chunks are dropped; at most MAX_TERMS rarest are kept.
COMMON_TERM_FRACTION = 0.01
MAX_TERMS = 8
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
CREATE INDEX IF NOT EXISTS symbols_name ON symbols (name);
CREATE INDEX IF NOT EXISTS symbols_path ON symbols (path);
CREATE TABLE IF NOT EXISTS skipped (path TEXT PRIMARY KEY, reason TEXT NOT NULL);
CREATE VIRTUAL TABLE IF NOT EXISTS chunk_tokens USING fts5(
    tokens, path UNINDEXED, tokenize = "unicode61 tokenchars '_'"
);
CREATE VIRTUAL TABLE IF NOT EXISTS chunk_vocab USING fts5vocab(chunk_tokens, 'row');
"""


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
            return
        db.execute("PRAGMA journal_mode = DELETE")
        db.executescript(_SCHEMA)
        db.executemany(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)",
            [("format", FORMAT), ("roots", "\0".join(roots))],
        )

    def close(self) -> None:
        self._db.close()

    def begin(self) -> None:
        self._db.execute("BEGIN")

    def commit(self) -> None:
        self._db.execute("COMMIT")

    def rollback(self) -> None:
        self._db.execute("ROLLBACK")

    # -- writes ------------------------------------------------------------------------------

    def put_file(self, path: str, record: FileRecord, tokens: Iterable[str]) -> None:
        """Replace one file's rows; `tokens` holds one space-joined token string per chunk."""
        self.delete_file(path)
        db = self._db
        db.execute(
            "INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
            (path, record.root, record.relpath, record.sha256, record.size, record.mtime_ns,
             record.language),
        )  # fmt: skip
        ids: list[int] = []
        for chunk, joined in zip(record.chunks, tokens, strict=True):
            cursor = db.execute(
                "INSERT INTO chunks (path, start_line, end_line, kind, name, text)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (path, chunk.start_line, chunk.end_line, chunk.kind, chunk.name, chunk.text),
            )
            chunk_id = cursor.lastrowid
            assert chunk_id is not None
            ids.append(chunk_id)
            db.execute(
                "INSERT INTO chunk_tokens (rowid, tokens, path) VALUES (?, ?, ?)",
                (chunk_id, joined, path),
            )
        db.executemany(
            "INSERT INTO symbols VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (s.name, s.qualified, s.kind, s.line, ids[s.chunk], path, s.chunk)
                for s in record.symbols
                if 0 <= s.chunk < len(ids)
            ],
        )

    def touch(self, path: str, mtime_ns: int) -> None:
        self._db.execute("UPDATE files SET mtime_ns = ? WHERE path = ?", (mtime_ns, path))

    def delete_file(self, path: str) -> bool:
        """Forget one file's rows; True when there were any."""
        db = self._db
        ids = [row[0] for row in db.execute("SELECT id FROM chunks WHERE path = ?", (path,))]
        db.executemany("DELETE FROM chunk_tokens WHERE rowid = ?", [(i,) for i in ids])
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

    # -- reads -------------------------------------------------------------------------------

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
        """Definitions of `name` (all, or the first `limit`) with where their chunks are."""
        rows = self._db.execute(
            "SELECT c.id, c.path, c.start_line, c.end_line, s.name, s.qualified, s.kind, s.line,"
            " s.ordinal FROM symbols s JOIN chunks c ON c.id = s.chunk_id WHERE s.name = ?"
            " ORDER BY c.id LIMIT ?",
            (name, limit),
        )
        return [
            DefinitionSpan(r[0], r[1], r[2], r[3], Symbol(r[4], r[5], r[6], r[7], r[8]))
            for r in rows
        ]

    def chunks(self, ids: list[int]) -> dict[int, StoredChunk]:
        """Chunks by id."""
        out: dict[int, StoredChunk] = {}
        for start in range(0, len(ids), 500):
            batch = ids[start : start + 500]
            marks = ",".join("?" * len(batch))
            query = (
                "SELECT id, path, start_line, end_line, kind, name, text"  # noqa: S608
                f" FROM chunks WHERE id IN ({marks})"
            )
            for r in self._db.execute(query, batch):
                out[r[0]] = StoredChunk(r[0], r[1], Chunk(r[2], r[3], r[4], r[5], r[6]))
        return out

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
        self, tokens: Iterable[str], k: int, exclude_path: str | None = None
    ) -> list[tuple[StoredChunk, float]]:
        """The `k` best chunks by FTS5's BM25 (higher is better here), best first.

        Terms found in more than a few percent of chunks are dropped first: they barely move
        BM25 and make FTS5 score most of the index.
        """
        terms = list(dict.fromkeys(t.lower() for t in tokens if _TERM.match(t.lower())))
        if not terms:
            return []
        frequencies = self.document_frequencies(terms)
        total = self._db.execute("SELECT max(id) FROM chunks").fetchone()[0] or 0
        limit = max(50, int(total * COMMON_TERM_FRACTION))
        kept = sorted((df, term) for term, df in frequencies.items() if df <= limit)
        match = fts_query(term for _, term in kept[:MAX_TERMS])
        if not match:
            return []
        rows = self._db.execute(
            "SELECT c.id, c.path, c.start_line, c.end_line, c.kind, c.name, c.text, t.score"
            " FROM (SELECT rowid, bm25(chunk_tokens) AS score FROM chunk_tokens"
            "       WHERE chunk_tokens MATCH ? AND path IS NOT ? ORDER BY score LIMIT ?) t"
            " JOIN chunks c ON c.id = t.rowid ORDER BY t.score, c.id",
            (match, exclude_path, k),
        )
        return [
            (StoredChunk(r[0], r[1], Chunk(r[2], r[3], r[4], r[5], r[6])), -float(r[7]))
            for r in rows
        ]
