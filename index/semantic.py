"""The vector side of a workspace index: chunk embeddings that follow the chunk store.

`SemanticIndex` keeps a FAISS index (`index.vectors`) keyed by the store's chunk ids in step with
the store: `sync` embeds the chunks that have no vector yet, in batches on the encoder's
low-priority worker, and drops the vectors of chunks that are gone. Symbol and lexical search
never wait for it: until the encoder is loaded and the vectors are in step, `search` answers
only from what is there (nothing at first).

The vectors live beside the chunk database in the workspace's private cache directory
(`vectors/`, 0700/0600). Files that cannot be used (truncated, another model) are deleted with a
warning and the chunks re-embedded.

torch, onnxruntime and faiss are imported only when the encoder or the vectors are first
needed, so importing this module costs nothing at language-server start.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from .encoders.child_process import ChildJobStopped
from .store import ChunkChanges, StoredChunk

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from .embeddings import Encoder, EncoderConfig
    from .vectors import VectorIndex

log = logging.getLogger(__name__)

VECTORS_DIR = "vectors"
# Chunks read from the store and embedded per step (at least a few encoder batches: a GPU's
# batches are large).
EMBED_BATCH = 64
# Query vectors of the last few query texts: keystrokes within a line reuse one.
QUERY_CACHE = 8
# Vectors are written out at most this often while embedding, and once at the end.
SAVE_EVERY_S = 30.0

SyncProgress = Callable[[int, int], None]


class ChunkSource(Protocol):
    """What the vectors follow: the chunk store's ids and chunks (a `WorkspaceIndex`)."""

    def chunk_ids(self) -> set[int]: ...

    def chunks(self, ids: list[int]) -> dict[int, StoredChunk]: ...


class AnnouncingSource(ChunkSource, Protocol):
    """A chunk source that also announces each commit's added and removed chunk ids."""

    chunk_listeners: list[Callable[[ChunkChanges], None]]


def embedding_text(stored: StoredChunk) -> str:
    """What is embedded for a chunk: its file and name give the code its subject."""
    chunk = stored.chunk
    title = f"{stored.path} {chunk.name}".strip()
    return f"{title}\n{chunk.text}"


@dataclass
class SyncReport:
    """What one `sync` did."""

    embedded: int = 0
    removed: int = 0
    total: int = 0
    seconds: float = 0.0
    stopped: bool = False
    warnings: list[str] = field(default_factory=list)


class SemanticIndex:
    """Embeddings of one workspace's chunks, persisted in `cache_dir / vectors`."""

    def __init__(
        self,
        cache_dir: Path,
        config: EncoderConfig | None = None,
        encoder: Encoder | None = None,
    ) -> None:
        """Vectors in `cache_dir`; the encoder is built from `config` on first use, or given."""
        self.directory = cache_dir / VECTORS_DIR
        self._config = config
        self._encoder: Encoder | None = encoder
        self._owns_encoder = encoder is None
        self._vectors: VectorIndex | None = None
        self._loading = threading.Lock()
        self._dirty = False
        self._queries: dict[str, NDArray[np.float32]] = {}
        self._pending: dict[str, Future[NDArray[np.float32]]] = {}
        self._queries_lock = threading.Lock()
        self._query_thread: ThreadPoolExecutor | None = None
        # Once a full diff has put the vectors in step, syncs apply only the announced changes.
        self._following = False
        self._in_step = False
        self._changes_lock = threading.Lock()
        self._heard_added: set[int] = set()
        self._heard_removed: set[int] = set()
        self.warnings: list[str] = []

    @property
    def ready(self) -> bool:
        """The encoder is loaded and there are vectors to search."""
        return self._encoder is not None and self._vectors is not None and len(self._vectors) > 0

    @property
    def encoder(self) -> Encoder:
        """The encoder, loaded on first use (seconds: call it off the event loop)."""
        self.load()
        assert self._encoder is not None
        return self._encoder

    @property
    def vectors(self) -> VectorIndex:
        """The vector index, loaded on first use."""
        self.load()
        assert self._vectors is not None
        return self._vectors

    def load(self, stop: threading.Event | None = None) -> None:
        """Load the encoder and the saved vectors (an unusable file is dropped with a warning).

        Setting `stop` ends a first-use model export with `ChildJobStopped`."""
        with self._loading:
            if self._encoder is not None and self._vectors is not None:
                return
            import faiss

            from .embeddings import EncoderConfig, load_encoder
            from .vectors import CorruptVectors, VectorIndex, VectorModelMismatch

            # One query is far too small for a thread team: with OpenMP's default (all cores) an
            # exact search at 10k vectors took 34 ms instead of 0.6 ms on two busy cores.
            faiss.omp_set_num_threads(1)

            encoder = self._encoder or load_encoder(self._config or EncoderConfig(), stop)
            try:
                vectors = VectorIndex.load(self.directory, encoder.name, encoder.dim)
            except FileNotFoundError:
                vectors = VectorIndex(encoder.name, encoder.dim)
            except (CorruptVectors, VectorModelMismatch) as exc:
                message = f"the workspace vectors were unusable and are rebuilt ({exc})"
                log.warning(message)
                self.warnings.append(message)
                shutil.rmtree(self.directory, ignore_errors=True)
                vectors = VectorIndex(encoder.name, encoder.dim)
            self._encoder, self._vectors = encoder, vectors

    def follow(self, source: AnnouncingSource) -> None:
        """Hear `source`'s commits: after one full diff, a sync touches only what changed
        (a full diff reads every chunk id: ~100 ms of CPU at 135k chunks, after every save)."""
        source.chunk_listeners.append(self._heard)
        self._following = True

    def _heard(self, changes: ChunkChanges) -> None:
        with self._changes_lock:
            self._heard_added.difference_update(changes.removed)
            self._heard_added.update(changes.added)
            self._heard_removed.update(changes.removed)

    def _changes(self, source: ChunkSource, vectors: VectorIndex) -> tuple[list[int], list[int]]:
        """The chunk ids to embed and the vector ids to drop, sorted."""
        with self._changes_lock:
            added, self._heard_added = self._heard_added, set()
            removed, self._heard_removed = self._heard_removed, set()
        if self._following and self._in_step:
            missing = sorted(i for i in added if not vectors.contains(i))
            return missing, sorted(i for i in removed if vectors.contains(i))
        # Changes heard from now on are applied by the next sync; this diff covers the rest.
        wanted = source.chunk_ids()
        have = vectors.ids()
        return sorted(wanted - have), sorted(have - wanted)

    def sync(
        self,
        source: ChunkSource,
        progress: SyncProgress | None = None,
        stop: threading.Event | None = None,
    ) -> SyncReport:
        """Embed the chunks without a vector and drop the vectors of chunks that are gone."""
        began = time.perf_counter()
        try:
            self.load(stop)
        except ChildJobStopped:
            return SyncReport(stopped=True, seconds=time.perf_counter() - began)
        assert self._vectors is not None and self._encoder is not None
        vectors, encoder = self._vectors, self._encoder
        report = SyncReport(warnings=self.warnings)
        self.warnings = []
        missing, stale = self._changes(source, vectors)
        # Until this sync has run to the end, the next one diffs everything again.
        self._in_step = False
        if stale:
            report.removed = vectors.remove(stale)
            self._dirty = True
        report.total = len(missing)
        saved_at = time.monotonic()
        step = max(EMBED_BATCH, 4 * encoder.batch_size)
        for start in range(0, len(missing), step):
            if stop is not None and stop.is_set():
                report.stopped = True
                break
            batch = missing[start : start + step]
            chunks = source.chunks(batch)
            # A chunk may be replaced while its batch was being read: embed what is still there.
            ids = [chunk_id for chunk_id in batch if chunk_id in chunks]
            if ids:
                texts = [embedding_text(chunks[chunk_id]) for chunk_id in ids]
                vectors.add(ids, encoder.encode(texts))
                report.embedded += len(ids)
                self._dirty = True
            if progress is not None:
                progress(min(start + step, len(missing)), len(missing))
            if time.monotonic() - saved_at > SAVE_EVERY_S:
                self.save()
                saved_at = time.monotonic()
        self.save()
        self._in_step = not report.stopped
        report.seconds = time.perf_counter() - began
        return report

    def search(self, text: str, k: int) -> list[int]:
        """Chunk ids nearest to `text`, best first; [] until the vectors are ready."""
        if not self.ready or not text.strip():
            return []
        assert self._vectors is not None
        return [chunk_id for chunk_id, _ in self._vectors.search(self._query_vector(text), k)]

    def prefetch(self, text: str) -> None:
        """Start embedding `text` on the query thread; a later `search(text)` waits for it.

        Edits call this between keystrokes and the completion path as it begins, so the query
        embedding (the ONNX session releases the GIL) runs ahead of, or beside, symbol and
        lexical search instead of after them."""
        if not self.ready or not text.strip():
            return
        with self._queries_lock:
            if text in self._queries or text in self._pending:
                return
            if self._query_thread is None:
                self._query_thread = ThreadPoolExecutor(1, thread_name_prefix="bastion-query")
            self._pending[text] = self._query_thread.submit(self._embed_query, text)

    def _query_vector(self, text: str) -> NDArray[np.float32]:
        with self._queries_lock:
            cached = self._queries.get(text)
            pending = self._pending.get(text)
        if cached is not None:
            return cached
        if pending is not None:
            return pending.result()
        return self._embed_query(text)

    def _embed_query(self, text: str) -> NDArray[np.float32]:
        assert self._encoder is not None
        try:
            vector = self._encoder.encode_query(text)
        except BaseException:
            with self._queries_lock:
                self._pending.pop(text, None)
            raise
        with self._queries_lock:
            if len(self._queries) >= QUERY_CACHE:
                self._queries.pop(next(iter(self._queries)))
            self._queries[text] = vector
            self._pending.pop(text, None)
        return vector

    def save(self) -> None:
        if self._vectors is not None and self._dirty:
            self._vectors.save(self.directory)
            self._dirty = False

    def close(self) -> None:
        """Write unsaved vectors and stop the worker of the encoder it built."""
        self.save()
        if self._query_thread is not None:
            self._query_thread.shutdown(wait=True)
            self._query_thread = None
        if self._encoder is not None and self._owns_encoder:
            self._encoder.close()
            self._encoder = None
