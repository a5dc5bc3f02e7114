"""The workspace index inside the language server: built in the background, asked on each request.

A cold build of a large workspace first makes the quick index (`index.quick`: every file, regex
definitions, BM25 over the raw text; seconds), which answers until the full index is committed
and is then deleted. Before either is ready, requests get no snippets rather than waiting; a
saved file is re-indexed alone. Once the full index answers, its chunks are embedded in the
background (the encoder is loaded then, not at start), with its own work-done progress; vector
results join the ranking as they arrive.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from lsprotocol import types
from pygls.progress import Progress

import index
from index.embeddings import EncoderConfig
from index.semantic import SemanticIndex
from inference import Snippet

log = logging.getLogger(__name__)

T = TypeVar("T")

# An edited (unsaved) file is re-indexed once typing has paused this long.
CHANGE_QUIET_S = 1.5
# Below this many files a cold full build takes about as long as the quick stage would.
QUICK_MIN_FILES = 2000
# How long shutting down waits for a running build to stop between two files.
STOP_WAIT_S = 3.0
COMPLETION_K = 3
CHAT_K = 4
SNIPPET_MAX_LINES = 40


def _as_prompt_snippet(found: index.Snippet) -> Snippet:
    lines = found.text.splitlines()[:SNIPPET_MAX_LINES]
    end = min(found.end_line, found.start_line + len(lines) - 1)
    return Snippet(found.path, found.start_line, max(end, found.start_line), "\n".join(lines))


Percent = Callable[[int | None], None]


class IndexService:
    def __init__(
        self,
        log_line: Callable[[str], None],
        on_percent: Percent = lambda percent: None,
        on_embedding_percent: Percent = lambda percent: None,
    ) -> None:
        self._log_line = log_line
        self._on_percent = on_percent
        self._on_embedding_percent = on_embedding_percent
        self._index: index.WorkspaceIndex | None = None
        self._quick: index.QuickIndex | None = None
        self._semantic: SemanticIndex | None = None
        self._ready = False
        self._building = asyncio.Lock()
        self._embedding: asyncio.Task[None] | None = None
        self._embed_again = False
        # Whether the log has said how the embeddings stand since the server started.
        self._embeddings_told = False
        self._stop = threading.Event()
        self._pending_changes: dict[Path, asyncio.TimerHandle] = {}
        self._updates: set[asyncio.Task[None]] = set()

    @property
    def ready(self) -> bool:
        return self._ready

    async def start(
        self,
        roots: list[Path],
        progress: Progress | None = None,
        embeddings: EncoderConfig | None = None,
    ) -> None:
        """Open (or build, or bring up to date) the index for `roots` off the event loop; then,
        with an `embeddings` config, embed new chunks in the background."""
        if not roots or self._stop.is_set():
            return
        async with self._building:
            workspace = self._index or index.WorkspaceIndex(roots)
            reporter = await IndexProgress.begin(progress, self._on_percent)
            try:
                if self._index is None and await asyncio.to_thread(workspace.is_empty):
                    await self._build_quick(workspace)
                else:  # one left behind by a session that did not end cleanly
                    index.QuickIndex.remove_leftover(workspace.cache_dir)
                refresh = workspace.refresh
                report = await self._stoppable(refresh, reporter.on_step, self._stop)
            except index.BuildStopped:
                self._log_line("workspace index: build stopped; the next start builds it again")
                return
            finally:
                reporter.end()
            self._index, self._ready = workspace, True
            await self._drop_quick()
            if embeddings is not None and self._semantic is None:
                self._semantic = SemanticIndex(workspace.cache_dir, embeddings)
                self._semantic.follow(workspace)
        self._log_line(
            f"workspace index: {report.files} files, {report.chunks} chunks "
            f"({report.indexed} indexed, {report.unchanged} unchanged, "
            f"{len(report.skipped)} skipped) in {report.seconds:.1f} s"
        )
        for warning in report.warnings:
            self._log_line(f"workspace index: {warning}")
        self.embed_in_background(progress)

    async def _build_quick(self, workspace: index.WorkspaceIndex) -> None:
        build = index.QuickIndex.build
        roots, cache, workers = workspace.roots, workspace.cache_dir, workspace.workers
        stop = self._stop
        try:
            quick = await self._stoppable(build, roots, cache, workers, QUICK_MIN_FILES, stop)
        except index.BuildStopped:
            raise
        except Exception as error:  # the full build still runs; only the early answers are lost
            log.exception("quick first stage failed")
            self._log_line(
                f"workspace index: quick first stage failed ({error}); waiting for the full index"
            )
            return
        if quick is not None:
            self._quick = quick
            self._log_line(
                f"workspace index: quick first stage, {quick.files} files searchable in "
                f"{quick.seconds:.1f} s; the full index follows"
            )

    async def _drop_quick(self) -> None:
        # Requests run on the event loop, so none is inside the quick index past this line.
        quick, self._quick = self._quick, None
        if quick is not None:
            await asyncio.to_thread(quick.discard)

    def _searchable(self) -> tuple[index.StoreQueries | None, SemanticIndex | None]:
        """The index that answers now, and the vectors that join it (only the full index's)."""
        if self._index is not None and self._ready:
            return self._index, self._semantic
        return self._quick, None

    def embed_in_background(self, progress: Progress | None = None) -> None:
        """Start embedding what has no vector yet; if a run is going, run once more after it."""
        if self._semantic is None or self._index is None:
            return
        if self._embedding is not None and not self._embedding.done():
            self._embed_again = True
            return
        self._embedding = asyncio.get_running_loop().create_task(self._embed(progress))

    async def _embed(self, progress: Progress | None) -> None:
        assert self._semantic is not None and self._index is not None
        semantic, workspace = self._semantic, self._index
        self._embed_again = False
        reporter = await IndexProgress.begin(
            progress, self._on_embedding_percent, "Bastion: embedding", "chunks"
        )
        try:
            sync = semantic.sync
            report = await self._stoppable(sync, workspace, reporter.on_count, self._stop)
        except Exception as error:  # an encoder that cannot load must not take the server down
            log.exception("embedding failed")
            self._log_line(f"workspace embeddings: off ({error})")
            self._semantic = None
            return
        finally:
            reporter.end()
        if report.embedded or report.removed or report.warnings:
            self._log_line(
                f"workspace embeddings: {report.embedded} chunks embedded, {report.removed} "
                f"dropped in {report.seconds:.1f} s ({semantic.encoder.backend})"
            )
            self._embeddings_told = True
        elif not self._embeddings_told and not report.stopped:
            # A start on a workspace embedded before: say that search by meaning is ready.
            self._log_line(
                f"workspace embeddings: up to date, {len(semantic.vectors)} chunks "
                f"({semantic.encoder.backend})"
            )
            self._embeddings_told = True
        for warning in report.warnings:
            self._log_line(f"workspace embeddings: {warning}")
        if self._embed_again and not self._stop.is_set():
            self.embed_in_background(None)

    async def close(self) -> None:
        """Stop building and embedding, save the vectors, close the encoder; drop a quick index
        left over."""
        self._stop.set()
        await self._build_stopped()
        await self._drop_quick()
        for pending in self._pending_changes.values():
            pending.cancel()
        self._pending_changes.clear()
        if self._embedding is not None:
            await asyncio.gather(self._embedding, return_exceptions=True)
        if self._semantic is not None:
            await asyncio.to_thread(self._semantic.close)

    async def _stoppable(self, work: Callable[..., T], *args: object) -> T:
        """`work` (which checks `self._stop`) in a worker thread. Only the loop's end cancels
        the wait (the editor is gone): then the work stops too, rather than run on for nobody
        while the process waits for its thread."""
        try:
            return await asyncio.to_thread(work, *args)
        except asyncio.CancelledError:
            self._stop.set()
            raise

    async def _build_stopped(self) -> None:
        """Wait until a running build has stopped (it checks between files), for a while."""
        try:
            await asyncio.wait_for(self._building.acquire(), STOP_WAIT_S)
        except TimeoutError:
            log.warning("the index build did not stop within %s s", STOP_WAIT_S)
        else:
            self._building.release()

    def for_completion(self, path: str, text: str, line: int, column: int) -> list[Snippet]:
        """Snippets for an inline completion at `path`:`line`:`column` (fast path, small k)."""
        searchable, vectors = self._searchable()
        if searchable is None:
            return []
        key = searchable.key_for(Path(path)) or path
        found = index.context(searchable, key, text, line, column, COMPLETION_K, vectors=vectors)
        return [_as_prompt_snippet(s) for s in found]

    def for_chat(self, query: str) -> list[Snippet]:
        """Snippets for a chat question, with absolute paths the editor can open."""
        searchable, vectors = self._searchable()
        if searchable is None:
            return []
        hits = index.search(searchable, query, CHAT_K, vectors=vectors)
        found = [_as_prompt_snippet(s) for s in hits]
        return [
            Snippet(str(searchable.file_path(s.path) or s.path), s.start_line, s.end_line, s.text)
            for s in found
        ]

    async def file_saved(self, path: Path, text: str | None) -> None:
        if self._index is not None and self._ready:
            await asyncio.to_thread(self._index.update_file, path, text)
            self.embed_in_background()

    def file_changed(
        self, path: Path, current_text: Callable[[], str | None], line: int | None = None
    ) -> None:
        """An edit in the editor at `line`: embed the completion query a cursor there will ask
        (while the user types on), and re-index the file's unsaved text once typing pauses."""
        if self._index is None or not self._ready:
            return
        loop = asyncio.get_running_loop()
        self._warm_query(current_text, line)
        pending = self._pending_changes.pop(path, None)
        if pending is not None:
            pending.cancel()

        def fire() -> None:
            del self._pending_changes[path]
            text = current_text()
            if text is not None:
                update = loop.create_task(self.file_saved(path, text))
                self._updates.add(update)
                update.add_done_callback(self._updates.discard)

        self._pending_changes[path] = loop.call_later(CHANGE_QUIET_S, fire)

    def _warm_query(self, current_text: Callable[[], str | None], line: int | None) -> None:
        semantic = self._semantic
        if semantic is None or not semantic.ready or line is None:
            return
        text = current_text()
        if text is not None:
            semantic.prefetch(index.vector_query(text.splitlines(), line))

    async def file_closed(self, path: Path) -> None:
        """Closed, perhaps without saving: the index goes back to what is on disk."""
        pending = self._pending_changes.pop(path, None)
        if pending is not None:
            pending.cancel()
        await self.file_saved(path, None)

    async def file_deleted(self, path: Path) -> None:
        if self._index is not None and self._ready:
            await asyncio.to_thread(self._index.remove_file, path)
            self.embed_in_background()


class IndexProgress:
    """Index build progress: LSP work-done progress where the client shows it, and the status."""

    def __init__(
        self,
        progress: Progress | None,
        token: str | None,
        on_percent: Percent,
        unit: str,
    ) -> None:
        self._progress = progress
        self._token = token
        self._on_percent = on_percent
        self._unit = unit
        self._loop = asyncio.get_running_loop()
        self._percent = -1

    @classmethod
    async def begin(
        cls,
        progress: Progress | None,
        on_percent: Percent,
        title: str = "Bastion: indexing",
        unit: str = "files",
    ) -> IndexProgress:
        on_percent(0)
        if progress is None:
            return cls(None, None, on_percent, unit)
        token = f"bastion-index-{secrets.token_hex(4)}"
        try:
            await progress.create_async(token)
        except Exception as error:  # a client may refuse; indexing goes on without a bar
            log.info("no work-done progress for %s: %s", title, error)
            return cls(None, None, on_percent, unit)
        progress.begin(token, types.WorkDoneProgressBegin(title=title, percentage=0))
        return cls(progress, token, on_percent, unit)

    def on_step(self, done: int, total: int, item: str) -> None:
        """Called from the indexing thread for each file."""
        self.on_count(done, total)

    def on_count(self, done: int, total: int) -> None:
        """Called from a worker thread; reports each new whole percent on the loop."""
        percent = done * 100 // max(total, 1)
        if percent == self._percent:
            return
        self._percent = percent
        self._loop.call_soon_threadsafe(self._on_percent, percent)
        if self._progress is None or self._token is None:
            return
        message = f"{done}/{total} {self._unit}"
        report = types.WorkDoneProgressReport(percentage=percent, message=message)
        self._loop.call_soon_threadsafe(self._progress.report, self._token, report)

    def end(self) -> None:
        self._on_percent(None)
        if self._progress is not None and self._token is not None:
            self._progress.end(self._token, types.WorkDoneProgressEnd(message="indexed"))
