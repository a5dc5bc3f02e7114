"""The workspace index: discovery, chunking, persistence and incremental refresh in one place.

A refresh stats every candidate file and re-reads only those whose size or mtime changed; their
chunking runs in worker processes when there are many (see `prepare`). A Merkle tree of directories
over the stored content hashes is kept beside the files, so a refresh reports which directories
changed and the root hash says whether anything did. Whatever follows the chunks (a vector index)
subscribes to `chunk_listeners`, or diffs `chunk_ids()`: chunk ids are never reused.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .chunker import ChunkLimits
from .discovery import discover, display_path, path_skip_reason
from .lexical import document_tokens
from .merkle_tree import DirectoryTree
from .prepare import FileJob, default_workers, file_record, prepare_all
from .queries import StoreQueries
from .store import (
    INDEX_FILE,
    ChunkChanges,
    CorruptIndex,
    FileRows,
    IndexStore,
    StoredChunk,
    workspace_dir,
)

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]
ChunkListener = Callable[[ChunkChanges], None]
ChunkRef = StoredChunk
# Files written per batch of INSERTs during a refresh.
WRITE_BATCH_FILES = 256


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
    # Directories whose Merkle hash changed (added, removed or edited below them); "" is the root.
    changed_dirs: list[str] = field(default_factory=list)
    root_hash: str = ""
    added_chunks: list[int] = field(default_factory=list)
    removed_chunks: list[int] = field(default_factory=list)


class WorkspaceIndex(StoreQueries):
    """One workspace (one or more roots) and its persisted index."""

    def __init__(
        self,
        roots: list[Path],
        cache_dir: Path | None = None,
        limits: ChunkLimits | None = None,
        workers: int | None = None,
    ) -> None:
        if not roots:
            raise ValueError("a workspace needs at least one root")
        self.roots = [root.resolve() for root in roots]
        self.cache_dir = cache_dir or workspace_dir(self.roots)
        self.limits = limits or ChunkLimits()
        self.workers = default_workers() if workers is None else max(1, workers)
        self.warnings: list[str] = []
        # Called after every committed change with the chunk ids added and removed.
        self.chunk_listeners: list[ChunkListener] = []
        self._store: IndexStore | None = None
        self._tree: DirectoryTree | None = None

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
        self._tree = None

    def tree(self) -> DirectoryTree:
        """The Merkle tree of directories over the indexed files, as stored."""
        if self._tree is None:
            stats = self.store.file_stats()
            files = {path: stat.sha256 for path, stat in stats.items()}
            self._tree = DirectoryTree.restore(files, self.store.directory_hashes())
        return self._tree

    def root_hash(self) -> str:
        """One hash over every indexed file's path and content."""
        return self.tree().root_hash

    def is_empty(self) -> bool:
        """Nothing indexed yet: the next refresh is a first, cold build."""
        return self.store.counts()[0] == 0

    def chunk_ids(self) -> set[int]:
        """Every stored chunk id; ids are never reused, so a follower can diff these sets."""
        return self.store.chunk_ids()

    def refresh(
        self, progress: Progress | None = None, stop: threading.Event | None = None
    ) -> IndexReport:
        """Bring the index up to date with the disk; only new or changed files are re-chunked.

        Setting `stop` ends it with `BuildStopped` and rolls back what it had written."""
        began = time.perf_counter()
        store = self.store
        report = IndexReport(warnings=list(self.warnings))
        self.warnings = []
        found = discover(self.roots)
        report.skipped.update(found.skipped)
        old = store.file_stats()
        tree = self.tree()
        seen: set[str] = set()
        total = len(found.candidates)
        done = 0
        jobs: list[FileJob] = []
        for candidate in found.candidates:
            key = display_path(self.roots, candidate.root, candidate.relpath)
            if candidate.size >= 0:
                size, mtime_ns = candidate.size, candidate.mtime_ns
            else:
                try:
                    stat = candidate.path.stat()
                except OSError as exc:
                    report.skipped[key] = f"unreadable ({exc.strerror})"
                    done += 1
                    continue
                size, mtime_ns = stat.st_size, stat.st_mtime_ns
            previous = old.get(key)
            if previous is not None and previous.size == size and previous.mtime_ns == mtime_ns:
                seen.add(key)
                report.unchanged += 1
                done += 1
                if progress is not None:
                    progress(done, total, key)
                continue
            root_index = self.roots.index(candidate.root)
            jobs.append(
                FileJob(
                    key,
                    root_index,
                    candidate.relpath,
                    str(candidate.path),
                    mtime_ns,
                    previous.sha256 if previous is not None else None,
                )
            )
        changes: dict[str, str | None] = {}
        store.begin()
        try:
            batch: list[tuple[str, FileRows]] = []
            for prepared in prepare_all(jobs, self.limits, self.workers, stop=stop):
                key = prepared.key
                done += 1
                if progress is not None:
                    progress(done, total, key)
                if prepared.skip_reason is not None:
                    report.skipped[key] = prepared.skip_reason
                    continue
                seen.add(key)
                if prepared.rows is None:
                    store.touch(key, prepared.mtime_ns)
                    report.unchanged += 1
                    continue
                if key in old:
                    store.delete_file(key)
                batch.append((key, prepared.rows))
                changes[key] = prepared.sha256
                report.indexed += 1
                if len(batch) >= WRITE_BATCH_FILES:
                    store.put_rows(batch, replace=False)
                    batch = []
            store.put_rows(batch, replace=False)
            for key in old.keys() - seen:
                store.delete_file(key)
                changes[key] = None
                report.removed += 1
            changed_dirs = tree.apply(changes)
            store.update_directory_hashes(changed_dirs)
            store.set_skipped(report.skipped)
        except BaseException:
            store.rollback()
            self._tree = None
            raise
        committed = store.commit()
        self._announce(committed)
        report.files, report.chunks, report.symbols = store.counts()
        report.skipped = dict(sorted(report.skipped.items()))
        report.changed_dirs = sorted(changed_dirs)
        report.root_hash = tree.root_hash
        report.added_chunks, report.removed_chunks = committed.added, committed.removed
        report.seconds = time.perf_counter() - began
        return report

    def _announce(self, changes: ChunkChanges) -> None:
        if not changes:
            return
        for listener in self.chunk_listeners:
            try:
                listener(changes)
            except Exception:  # the index is committed; a follower's failure is its own
                log.exception("a chunk listener failed; it can catch up with chunk_ids()")

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
        digest = hashlib.sha256(data).hexdigest()
        record = file_record(root_index, relpath, data, digest, mtime_ns, self.limits)
        tree = self.tree()
        store = self.store
        store.begin()
        try:
            if isinstance(record, str):
                store.delete_file(key)
                store.skip(key, record)
                changed = tree.apply({key: None})
            else:
                store.skip(key, None)
                tokens = [document_tokens(key, chunk.text) for chunk in record.chunks]
                store.put_files([(key, record, tokens)])
                changed = tree.apply({key: digest})
            store.update_directory_hashes(changed)
        except BaseException:
            store.rollback()
            self._tree = None
            raise
        self._announce(store.commit())
        return not isinstance(record, str)

    def remove_file(self, path: Path) -> bool:
        """Forget a deleted file; True when it was indexed."""
        located = self._locate(path)
        if located is None:
            return False
        key = located[2]
        tree = self.tree()
        store = self.store
        store.begin()
        try:
            removed = store.delete_file(key)
            store.update_directory_hashes(tree.apply({key: None}))
        except BaseException:
            store.rollback()
            self._tree = None
            raise
        self._announce(store.commit())
        return removed
