"""The read side shared by the full workspace index and the quick first-stage index.

Ranking (`index.ranking`) asks only these methods, so it answers from either store alike.
"""

from __future__ import annotations

from pathlib import Path

from .chunker import Symbol
from .discovery import display_path
from .store import DefinitionSpan, IndexStore, StoredChunk


class StoreQueries:
    """Queries over `self.store` for files under `self.roots`."""

    roots: list[Path]

    @property
    def store(self) -> IndexStore:
        raise NotImplementedError

    def paths(self) -> set[str]:
        """The stored paths of every indexed file."""
        return set(self.store.paths())

    def skipped(self) -> dict[str, str]:
        """Files left out at the last refresh, with reasons."""
        return self.store.skipped()

    def definitions(self, name: str) -> list[tuple[StoredChunk, Symbol]]:
        """Every definition of `name` with its chunk."""
        return self.store.definitions(name)

    def definition_spans(self, name: str, limit: int = -1) -> list[DefinitionSpan]:
        """Definitions of `name` (all, or the first `limit`) with their chunks' places."""
        return self.store.definition_spans(name, limit)

    def definition_spans_many(
        self, names: list[str], limit: int
    ) -> dict[str, list[DefinitionSpan]]:
        """The first `limit` definitions of each of `names`, in one query."""
        return self.store.definition_spans_many(names, limit)

    def chunks(self, ids: list[int]) -> dict[int, StoredChunk]:
        """Chunks by id."""
        return self.store.chunks(ids)

    def chunk_spans(self, ids: list[int]) -> dict[int, StoredChunk]:
        """Chunks by id with their text left empty: cheaper when most are dropped."""
        return self.store.chunks(ids, with_text=False)

    def lexical(
        self, tokens: list[str], k: int, exclude_path: str | None = None
    ) -> list[StoredChunk]:
        """The `k` best chunks by BM25 over code-aware tokens, best first."""
        return [ref for ref, _ in self.store.lexical(tokens, k, exclude_path)]

    def lexical_spans(
        self, tokens: list[str], k: int, exclude_path: str | None = None
    ) -> list[StoredChunk]:
        """Like `lexical`, but the chunks' text is left empty: cheaper when most are dropped."""
        return [ref for ref, _ in self.store.lexical(tokens, k, exclude_path, with_text=False)]

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

    def _locate(self, path: Path) -> tuple[int, str, str] | None:
        path = path.resolve()
        for root_index, root in enumerate(self.roots):
            try:
                relpath = path.relative_to(root).as_posix()
            except ValueError:
                continue
            return root_index, relpath, display_path(self.roots, root, relpath)
        return None
