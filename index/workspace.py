"""The workspace index: discovery, chunking, persistence and incremental refresh in one place."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .chunker import ChunkLimits, Symbol, chunk_file
from .discovery import content_skip_reason, discover, display_path, path_skip_reason
from .lexical import document_tokens
from .store import (
    INDEX_FILE,
    CorruptIndex,
    DefinitionSpan,
    FileRecord,
    IndexStore,
    StoredChunk,
    workspace_dir,
)

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]
ChunkRef = StoredChunk


@dataclass
class IndexReport:
    """What a build or refresh did."""

    files: int = 0
    chunks: int = 0
    symbols: int = 0
    indexed: int = 0
    unchanged: int = 0
    removed: int = 0
    seconds: float = 0.0
    skipped: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class WorkspaceIndex:
    """One workspace (one or more roots) and its persisted index."""

    def __init__(
        self,
        roots: list[Path],
        cache_dir: Path | None = None,
        limits: ChunkLimits | None = None,
    ) -> None:
        if not roots:
            raise ValueError("a workspace needs at least one root")
        self.roots = [root.resolve() for root in roots]
        self.cache_dir = cache_dir or workspace_dir(self.roots)
        self.limits = limits or ChunkLimits()
        self.warnings: list[str] = []
        self._store: IndexStore | None = None

    @property
    def store(self) -> IndexStore:
        """The database, opened on first use; an unreadable one is replaced with a warning."""
        if self._store is None:
            names = [str(root) for root in self.roots]
            try:
                self._store = IndexStore(self.cache_dir, names)
            except CorruptIndex as exc:
                message = f"the workspace index was unreadable and is rebuilt ({exc})"
                log.warning(message)
                self.warnings.append(message)
                for stale in self.cache_dir.glob(INDEX_FILE + "*"):
                    stale.unlink()
                self._store = IndexStore(self.cache_dir, names)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def refresh(self, progress: Progress | None = None) -> IndexReport:
        """Bring the index up to date with the disk; only new or changed files are re-chunked."""
        began = time.perf_counter()
        store = self.store
        report = IndexReport(warnings=list(self.warnings))
        self.warnings = []
        found = discover(self.roots)
        report.skipped.update(found.skipped)
        old = store.file_stats()
        seen: set[str] = set()
        total = len(found.candidates)
        store.begin()
        try:
            for number, candidate in enumerate(found.candidates, 1):
                key = display_path(self.roots, candidate.root, candidate.relpath)
                if progress is not None:
                    progress(number, total, key)
                try:
                    stat = candidate.path.stat()
                except OSError as exc:
                    report.skipped[key] = f"unreadable ({exc.strerror})"
                    continue
                previous = old.get(key)
                if (
                    previous is not None
                    and previous.size == stat.st_size
                    and previous.mtime_ns == stat.st_mtime_ns
                ):
                    seen.add(key)
                    report.unchanged += 1
                    continue
                try:
                    data = candidate.path.read_bytes()
                except OSError as exc:
                    report.skipped[key] = f"unreadable ({exc.strerror})"
                    continue
                digest = hashlib.sha256(data).hexdigest()
                if previous is not None and previous.sha256 == digest:
                    store.touch(key, stat.st_mtime_ns)
                    seen.add(key)
                    report.unchanged += 1
                    continue
                root_index = self.roots.index(candidate.root)
                record = self._record(root_index, candidate.relpath, data, digest, stat.st_mtime_ns)
                if isinstance(record, str):
                    report.skipped[key] = record
                    continue
                self._put(key, record)
                seen.add(key)
                report.indexed += 1
            for key in old.keys() - seen:
                store.delete_file(key)
                report.removed += 1
            store.set_skipped(report.skipped)
        except BaseException:
            store.rollback()
            raise
        store.commit()
        report.files, report.chunks, report.symbols = store.counts()
        report.skipped = dict(sorted(report.skipped.items()))
        report.seconds = time.perf_counter() - began
        return report

    def _put(self, key: str, record: FileRecord) -> None:
        tokens = [document_tokens(key, chunk.text) for chunk in record.chunks]
        self.store.put_file(key, record, tokens)

    def _record(
        self, root: int, relpath: str, data: bytes, digest: str, mtime_ns: int
    ) -> FileRecord | str:
        """A fresh record for one file's content, or the reason it is skipped."""
        if reason := content_skip_reason(data):
            return reason
        text = data.decode("utf-8")
        try:
            chunked = chunk_file(relpath, text, self.limits)
        except (ValueError, RecursionError) as exc:  # a grammar that chokes: fall back to text
            log.warning("chunking %s failed (%s); using line windows", relpath, exc)
            chunked = chunk_file(relpath + ".txt", text, self.limits)
        return FileRecord(
            root=root,
            relpath=relpath,
            sha256=digest,
            size=len(data),
            mtime_ns=mtime_ns,
            language=chunked.language,
            chunks=chunked.chunks,
            symbols=chunked.symbols,
        )

    def update_file(self, path: Path, text: str | None = None) -> bool:
        """Re-index one file (an editor's didSave or didChange); False when it is not indexed."""
        located = self._locate(path)
        if located is None:
            return False
        root_index, relpath, key = located
        try:
            data = text.encode("utf-8") if text is not None else path.read_bytes()
            mtime_ns = path.stat().st_mtime_ns if path.exists() else 0
        except OSError:
            return self.remove_file(path)
        if path_skip_reason(relpath, len(data)):
            return False
        record = self._record(root_index, relpath, data, hashlib.sha256(data).hexdigest(), mtime_ns)
        store = self.store
        store.begin()
        try:
            if isinstance(record, str):
                store.delete_file(key)
                store.skip(key, record)
            else:
                store.skip(key, None)
                self._put(key, record)
        finally:
            store.commit()
        return not isinstance(record, str)

    def remove_file(self, path: Path) -> bool:
        """Forget a deleted file; True when it was indexed."""
        located = self._locate(path)
        if located is None:
            return False
        store = self.store
        store.begin()
        try:
            return store.delete_file(located[2])
        finally:
            store.commit()

    def _locate(self, path: Path) -> tuple[int, str, str] | None:
        path = path.resolve()
        for root_index, root in enumerate(self.roots):
            try:
                relpath = path.relative_to(root).as_posix()
            except ValueError:
                continue
            return root_index, relpath, display_path(self.roots, root, relpath)
        return None

    # -- queries -----------------------------------------------------------------------------

    def paths(self) -> set[str]:
        """The stored paths of every indexed file."""
        return set(self.store.paths())

    def skipped(self) -> dict[str, str]:
        """Files left out at the last refresh, with reasons."""
        return self.store.skipped()

    def definitions(self, name: str) -> list[tuple[ChunkRef, Symbol]]:
        """Every definition of `name` with its chunk."""
        return self.store.definitions(name)

    def definition_spans(self, name: str, limit: int = -1) -> list[DefinitionSpan]:
        """Definitions of `name` (all, or the first `limit`) with their chunks' places."""
        return self.store.definition_spans(name, limit)

    def chunks(self, ids: list[int]) -> dict[int, ChunkRef]:
        """Chunks by id."""
        return self.store.chunks(ids)

    def lexical(self, tokens: list[str], k: int, exclude_path: str | None = None) -> list[ChunkRef]:
        """The `k` best chunks by BM25 over code-aware tokens, best first."""
        return [ref for ref, _ in self.store.lexical(tokens, k, exclude_path)]

    def file_path(self, path: str) -> Path | None:
        """The file on disk for a stored (display) path."""
        location = self.store.file_location(path)
        if location is None:
            return None
        return self.roots[location[0]] / location[1]

    def key_for(self, path: Path) -> str | None:
        """The stored (display) path of a file on disk, or None outside the roots."""
        located = self._locate(path)
        return located[2] if located else None
