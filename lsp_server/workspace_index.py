"""The workspace index inside the language server: built in the background, asked on each request.

Until the first build is done, requests get no snippets rather than waiting; a saved file is
re-indexed alone.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from pathlib import Path

from lsprotocol import types
from pygls.progress import Progress

import index
from inference import Snippet

log = logging.getLogger(__name__)

COMPLETION_K = 3
CHAT_K = 4
SNIPPET_MAX_LINES = 40


def _as_prompt_snippet(found: index.Snippet) -> Snippet:
    lines = found.text.splitlines()[:SNIPPET_MAX_LINES]
    end = min(found.end_line, found.start_line + len(lines) - 1)
    return Snippet(found.path, found.start_line, max(end, found.start_line), "\n".join(lines))


class IndexService:
    def __init__(
        self,
        log_line: Callable[[str], None],
        on_percent: Callable[[int | None], None] = lambda percent: None,
    ) -> None:
        self._log_line = log_line
        self._on_percent = on_percent
        self._index: index.WorkspaceIndex | None = None
        self._ready = False
        self._building = asyncio.Lock()

    @property
    def ready(self) -> bool:
        return self._ready

    async def start(self, roots: list[Path], progress: Progress | None = None) -> None:
        """Open (or build, or bring up to date) the index for `roots` off the event loop."""
        if not roots:
            return
        async with self._building:
            workspace = self._index or index.WorkspaceIndex(roots)
            reporter = await IndexProgress.begin(progress, self._on_percent)
            try:
                report = await asyncio.to_thread(workspace.refresh, reporter.on_file)
            finally:
                reporter.end()
            self._index, self._ready = workspace, True
        self._log_line(
            f"workspace index: {report.files} files, {report.chunks} chunks "
            f"({report.indexed} indexed, {report.unchanged} unchanged, "
            f"{len(report.skipped)} skipped) in {report.seconds:.1f} s"
        )
        for warning in report.warnings:
            self._log_line(f"workspace index: {warning}")

    def for_completion(self, path: str, text: str, line: int, column: int) -> list[Snippet]:
        """Snippets for an inline completion at `path`:`line`:`column` (fast path, small k)."""
        if self._index is None or not self._ready:
            return []
        key = self._index.key_for(Path(path)) or path
        found = index.context(self._index, key, text, line, column, COMPLETION_K)
        return [_as_prompt_snippet(s) for s in found]

    def for_chat(self, query: str) -> list[Snippet]:
        """Snippets for a chat question, with absolute paths the editor can open."""
        if self._index is None or not self._ready:
            return []
        found = [_as_prompt_snippet(s) for s in index.search(self._index, query, CHAT_K)]
        return [
            Snippet(str(self._index.file_path(s.path) or s.path), s.start_line, s.end_line, s.text)
            for s in found
        ]

    async def file_saved(self, path: Path, text: str | None) -> None:
        if self._index is not None and self._ready:
            await asyncio.to_thread(self._index.update_file, path, text)

    async def file_deleted(self, path: Path) -> None:
        if self._index is not None and self._ready:
            await asyncio.to_thread(self._index.remove_file, path)


class IndexProgress:
    """Index build progress: LSP work-done progress where the client shows it, and the status."""

    def __init__(
        self,
        progress: Progress | None,
        token: str | None,
        on_percent: Callable[[int | None], None],
    ) -> None:
        self._progress = progress
        self._token = token
        self._on_percent = on_percent
        self._loop = asyncio.get_running_loop()
        self._percent = -1

    @classmethod
    async def begin(
        cls, progress: Progress | None, on_percent: Callable[[int | None], None]
    ) -> IndexProgress:
        on_percent(0)
        if progress is None:
            return cls(None, None, on_percent)
        token = f"bastion-index-{secrets.token_hex(4)}"
        try:
            await progress.create_async(token)
        except Exception as error:  # a client may refuse; indexing goes on without a bar
            log.info("no work-done progress for indexing: %s", error)
            return cls(None, None, on_percent)
        progress.begin(token, types.WorkDoneProgressBegin(title="Bastion: indexing", percentage=0))
        return cls(progress, token, on_percent)

    def on_file(self, done: int, total: int, path: str) -> None:
        """Called from the indexing thread; reports each new whole percent on the loop."""
        percent = done * 100 // max(total, 1)
        if percent == self._percent:
            return
        self._percent = percent
        self._loop.call_soon_threadsafe(self._on_percent, percent)
        if self._progress is None or self._token is None:
            return
        report = types.WorkDoneProgressReport(percentage=percent, message=f"{done}/{total} files")
        self._loop.call_soon_threadsafe(self._progress.report, self._token, report)

    def end(self) -> None:
        self._on_percent(None)
        if self._progress is not None and self._token is not None:
            self._progress.end(self._token, types.WorkDoneProgressEnd(message="indexed"))
