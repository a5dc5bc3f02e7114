"""Chunk embeddings in a FAISS index keyed by the index store's chunk ids.

Vectors are L2-normalised on the way in, so inner product is cosine similarity. While the workspace
is small the index is exact (`IndexIDMap2` over `IndexFlatIP`); past `IVF_THRESHOLD` vectors it is
rebuilt as an IVF index with 8-bit scalar quantisation (a quarter of the memory, supports removal,
unlike HNSW). The IVF index is retrained when the workspace has grown `REBUILD_GROWTH` times past
the size it was trained on, and goes back to exact when it shrinks well below the threshold.
Rebuilds train and fill the new index outside the lock, so searches keep being answered from the
old one; changes made meanwhile are journaled and replayed before the swap.

With a GPU (faiss-gpu), searches run on a GPU copy; the CPU index stays the source of truth for
changes and persistence. The copy is refreshed on a search once changes have been quiet for
`GPU_REFRESH_QUIET_S`; until then searches use the CPU index, so results are never stale.

On disk: `vectors.faiss` and a JSON sidecar (format, model, dim, count, sha256 of the index file),
both 0600 in a 0700 directory and written atomically. A file that is truncated, altered or written
by another format raises `CorruptVectors`; one made by another embedding model or dimension raises
`VectorModelMismatch`. The caller deletes both and re-embeds.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

FORMAT = 1
INDEX_FILE = "vectors.faiss"
SIDECAR_FILE = "vectors.json"
# Exact search of one 384-d query on one thread measured p50 0.76 ms at 10k vectors, 1.3 ms at 20k,
# 3.3 ms at 40k and 30 ms at 100k (benchmarks/vector_index.py); 20k keeps it within a quarter of
# the completion path's 5 ms retrieval budget. IVF with sqrt(n) lists and nprobe 32 measured
# recall@10 0.98-0.99 against exact at 10k-100k on clustered vectors.
IVF_THRESHOLD = 20_000
NPROBE = 32
REBUILD_GROWTH = 2.0
# k-means trains on at most this many points per list (faiss wants >= 39).
TRAIN_POINTS_PER_LIST = 64
KMEANS_ITERATIONS = 10
# Rebuild batches: the lock is held only to read one batch of the old index.
REBUILD_BATCH = 8192
GPU_MAX_K = 2048
GPU_REFRESH_QUIET_S = 2.0

Kind = Literal["flat", "ivf"]
_FLAT: Kind = "flat"
_IVF: Kind = "ivf"
# faiss's bundled stubs are partial (no DirectMap); the module is used untyped.
_faiss: Any = faiss
_HASHTABLE_MAP = _faiss.DirectMap.Hashtable
Float32Array = npt.NDArray[np.float32]
IdArray = npt.NDArray[np.int64]


class CorruptVectors(Exception):
    """The stored vectors cannot be trusted (truncated, altered, other format); rebuild them."""


class VectorModelMismatch(Exception):
    """The stored vectors were made by another embedding model or dimension; rebuild them."""


class VectorSidecar(BaseModel):
    """What is stored next to the index file to check it before loading."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: int
    model: str = Field(min_length=1)
    dim: int = Field(gt=0)
    count: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    kind: Kind
    trained_on: int = Field(ge=0)


def ivf_lists(count: int) -> int:
    """Inverted lists for `count` vectors: ~sqrt(n), and at least 39 training points per list."""
    return max(1, min(int(math.sqrt(count)), count // 39))


def _flat(dim: int) -> Any:
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def _normalised(vectors: Float32Array, what: str) -> Float32Array:
    if not np.all(np.isfinite(vectors)):
        raise ValueError(f"{what} contain NaN or infinite values")
    norms = np.linalg.norm(vectors, axis=1)
    zero = np.flatnonzero(norms == 0)
    if zero.size:
        raise ValueError(f"{what} row {int(zero[0])} is all zeros and has no direction")
    out: Float32Array = np.ascontiguousarray(vectors / norms[:, None], dtype=np.float32)
    return out


def _as_matrix(values: npt.ArrayLike, dim: int, what: str) -> Float32Array:
    array = np.asarray(values, dtype=np.float32)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != dim:
        raise ValueError(f"{what} must have shape ({dim},) or (n, {dim}), got {array.shape}")
    return _normalised(array, what)


def _as_ids(ids: Iterable[int] | npt.ArrayLike) -> IdArray:
    array = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids))  # type: ignore[arg-type]
    if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
        raise ValueError(
            f"ids must be a flat sequence of integers, got {array.dtype} {array.shape}"
        )
    out: IdArray = np.ascontiguousarray(array, dtype=np.int64)
    if np.unique(out).size != out.size:
        raise ValueError("ids must be unique within one call")
    return out


def _stored_ids(index: Any, kind: Kind) -> IdArray:
    if kind == "flat":
        flat_ids: IdArray = faiss.vector_to_array(index.id_map).astype(np.int64)
        return flat_ids
    lists = index.invlists
    parts = [
        faiss.rev_swig_ptr(lists.get_ids(n), lists.list_size(n)).copy()
        for n in range(index.nlist)
        if lists.list_size(n)
    ]
    ivf_ids: IdArray = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
    return ivf_ids


def _private_dir(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _temp_file(directory: Path, name: str) -> Path:
    """A new private (0600) file beside `name`, for an atomic replace."""
    descriptor, temp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    os.close(descriptor)
    return Path(temp)


def _describe(index: Any) -> str:
    """The FAISS classes of `index`, wrappers first: "IndexIDMap2(GpuIndexFlatIP)"."""
    inner = getattr(index, "index", None)
    if inner is None:
        return type(index).__name__
    return f"{type(index).__name__}({_describe(faiss.downcast_index(inner))})"


class _GpuCopy:
    """A GPU copy of the CPU index, refreshed lazily after changes settle."""

    def __init__(self) -> None:
        self._resources = faiss.StandardGpuResources()
        self._index: Any = None

    def get(self, cpu_index: Any, stale: bool) -> Any:
        if self._index is None or stale:
            self._index = faiss.index_cpu_to_gpu(self._resources, 0, cpu_index)
        return self._index


class VectorIndex:
    """A thread-safe cosine-similarity index of chunk embeddings, keyed by int64 chunk ids."""

    def __init__(
        self,
        model: str,
        dim: int,
        *,
        ivf_threshold: int = IVF_THRESHOLD,
        nprobe: int = NPROBE,
        use_gpu: bool = True,
    ) -> None:
        if not model:
            raise ValueError("model must name the embedding model the vectors come from")
        if dim <= 0 or ivf_threshold <= 0 or nprobe <= 0:
            raise ValueError("dim, ivf_threshold and nprobe must be positive")
        self.model = model
        self.dim = dim
        self.ivf_threshold = ivf_threshold
        self.nprobe = nprobe
        self._lock = threading.RLock()
        self._index: Any = _flat(dim)
        self._kind: Kind = "flat"
        self._trained_on = 0
        self._ids: set[int] = set()
        # While a rebuild runs: the changes made since it started, replayed before the swap.
        self._journal: list[tuple[IdArray, Float32Array | None]] | None = None
        gpu_ready = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
        self._gpu = _GpuCopy() if use_gpu and gpu_ready else None
        self._gpu_stale = True
        self._changed_at = 0.0
        self.searched_by = ""  # the FAISS class that answered the last search

    # ----- reading

    @property
    def device(self) -> Literal["cpu", "gpu"]:
        """Where searches run once the index has been quiet for a moment."""
        return "gpu" if self._gpu is not None else "cpu"

    @property
    def kind(self) -> Kind:
        """ "flat" (exact) or "ivf" (approximate)."""
        return self._kind

    def __len__(self) -> int:
        with self._lock:
            return len(self._ids)

    def __contains__(self, chunk_id: object) -> bool:
        return self.contains(chunk_id) if isinstance(chunk_id, int) else False

    def contains(self, chunk_id: int) -> bool:
        with self._lock:
            return chunk_id in self._ids

    def ids(self) -> set[int]:
        with self._lock:
            return set(self._ids)

    def search(
        self, query: npt.ArrayLike, k: int, exclude: Iterable[int] | None = None
    ) -> list[tuple[int, float]]:
        """The `k` most similar chunk ids, best first, as (id, cosine similarity).

        `query` is one vector (dim,) or several (n, dim); with several, an id's score is its best
        over the queries. Ids in `exclude` (say, the chunks of the file being edited) are skipped.
        """
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        queries = _as_matrix(query, self.dim, "query")
        excluded = frozenset(exclude or ())
        with self._lock:
            if not self._ids:
                return []
            fetch = min(len(self._ids), k + len(excluded))
            searcher = self._searcher(fetch)
            self.searched_by = _describe(searcher)
            scores, labels = searcher.search(queries, fetch)
        best: dict[int, float] = {}
        for score, label in zip(scores.ravel().tolist(), labels.ravel().tolist(), strict=True):
            if label >= 0 and label not in excluded and score > best.get(label, -math.inf):
                best[label] = score
        return sorted(best.items(), key=lambda item: (-item[1], item[0]))[:k]

    def _searcher(self, fetch: int) -> Any:
        """The GPU copy if there is one, it can answer `fetch` results and changes have settled."""
        if self._gpu is None or fetch > GPU_MAX_K:
            return self._index
        if self._gpu_stale and time.monotonic() - self._changed_at < GPU_REFRESH_QUIET_S:
            return self._index
        searcher = self._gpu.get(self._index, self._gpu_stale)
        self._gpu_stale = False
        return searcher

    # ----- changing

    def add(self, ids: Iterable[int] | npt.ArrayLike, vectors: npt.ArrayLike) -> None:
        """Add or replace the vectors of `ids` (one row of `vectors` per id)."""
        keys = _as_ids(ids)
        rows = _as_matrix(vectors, self.dim, "vectors")
        if rows.shape[0] != keys.size:
            raise ValueError(f"got {keys.size} ids but {rows.shape[0]} vectors")
        if keys.size == 0:
            return
        with self._lock:
            replaced = np.asarray([key for key in keys.tolist() if key in self._ids], np.int64)
            if replaced.size:
                self._index.remove_ids(replaced)
            self._index.add_with_ids(rows, keys)
            self._ids.update(keys.tolist())
            self._changed(keys, rows)
            rebuild = self._wants_rebuild()
        if rebuild:
            self.rebuild()

    def remove(self, ids: Iterable[int] | npt.ArrayLike) -> int:
        """Remove `ids` (absent ones are ignored); returns how many were present."""
        keys = _as_ids(ids)
        with self._lock:
            present = np.asarray([key for key in keys.tolist() if key in self._ids], np.int64)
            if present.size == 0:
                return 0
            self._index.remove_ids(present)
            self._ids.difference_update(present.tolist())
            self._changed(present, None)
            rebuild = self._wants_rebuild()
        if rebuild:
            self.rebuild()
        return int(present.size)

    def _changed(self, keys: IdArray, rows: Float32Array | None) -> None:
        if self._journal is not None:
            self._journal.append((keys, rows))
        self._gpu_stale = True
        self._changed_at = time.monotonic()

    def _wants_rebuild(self) -> bool:
        count = len(self._ids)
        if self._journal is not None:
            return False
        if self._kind == "flat":
            return count >= self.ivf_threshold
        return count >= REBUILD_GROWTH * self._trained_on or count < self.ivf_threshold // 2

    def rebuild(self) -> None:
        """Rebuild for the current size: exact below the threshold, else a freshly trained IVF.

        Runs in the caller's thread; searches and changes from other threads go on meanwhile.
        """
        with self._lock:
            if self._journal is not None:
                return  # another thread is rebuilding
            self._journal = []
            snapshot = np.fromiter(self._ids, dtype=np.int64, count=len(self._ids))
        try:
            if snapshot.size >= self.ivf_threshold:
                target, kind = self._trained_ivf(snapshot), _IVF
            else:
                target, kind = _flat(self.dim), _FLAT
            for start in range(0, snapshot.size, REBUILD_BATCH):
                batch = snapshot[start : start + REBUILD_BATCH]
                with self._lock:
                    batch = batch[[key in self._ids for key in batch.tolist()]]
                    rows = self._index.reconstruct_batch(batch) if batch.size else None
                if rows is not None:
                    target.add_with_ids(_normalised(rows, "stored vectors"), batch)
            with self._lock:
                for keys, journaled in self._journal:
                    target.remove_ids(keys)  # absent ids are ignored; an add is a replace
                    if journaled is not None:
                        target.add_with_ids(journaled, keys)
                self._index, self._kind = target, kind
                self._trained_on = snapshot.size if kind == "ivf" else 0
                self._gpu_stale = True
        finally:
            with self._lock:
                self._journal = None

    def _trained_ivf(self, snapshot: IdArray) -> Any:
        lists = ivf_lists(snapshot.size)
        sample_size = min(snapshot.size, TRAIN_POINTS_PER_LIST * lists)
        chosen = np.random.default_rng(0).choice(snapshot, size=sample_size, replace=False)
        with self._lock:
            chosen = chosen[[key in self._ids for key in chosen.tolist()]]
            sample = _normalised(self._index.reconstruct_batch(chosen), "stored vectors")
        quantizer = faiss.IndexFlatIP(self.dim)
        ivf = faiss.IndexIVFScalarQuantizer(
            quantizer, self.dim, lists, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
        ivf.cp.niter = KMEANS_ITERATIONS
        ivf.train(sample)
        ivf.nprobe = min(self.nprobe, lists)
        ivf.set_direct_map_type(_HASHTABLE_MAP)  # reconstruct and cheap removal
        return ivf

    # ----- persistence

    def save(self, directory: Path) -> None:
        """Write the index and its sidecar into `directory` (0700), atomically, files 0600."""
        _private_dir(directory)
        index_path, sidecar_path = directory / INDEX_FILE, directory / SIDECAR_FILE
        temp_index = _temp_file(directory, INDEX_FILE)
        temp_sidecar = _temp_file(directory, SIDECAR_FILE)
        try:
            with self._lock:
                faiss.write_index(self._index, str(temp_index))
                count, kind, trained_on = len(self._ids), self._kind, self._trained_on
            _fsync(temp_index)
            sidecar = VectorSidecar(
                format=FORMAT,
                model=self.model,
                dim=self.dim,
                count=count,
                sha256=_sha256(temp_index),
                kind=kind,
                trained_on=trained_on,
            )
            temp_sidecar.write_text(sidecar.model_dump_json(), encoding="utf-8")
            _fsync(temp_sidecar)
            os.replace(temp_index, index_path)
            os.replace(temp_sidecar, sidecar_path)
            _fsync(directory)
        finally:
            temp_index.unlink(missing_ok=True)
            temp_sidecar.unlink(missing_ok=True)

    @classmethod
    def load(
        cls,
        directory: Path,
        expected_model: str,
        expected_dim: int,
        *,
        ivf_threshold: int = IVF_THRESHOLD,
        nprobe: int = NPROBE,
        use_gpu: bool = True,
    ) -> VectorIndex:
        """Load what `save` wrote. FileNotFoundError when nothing was saved there; otherwise
        `CorruptVectors` or `VectorModelMismatch` when the files cannot be used."""
        index_path, sidecar_path = directory / INDEX_FILE, directory / SIDECAR_FILE
        if not index_path.exists() and not sidecar_path.exists():
            raise FileNotFoundError(f"no saved vectors in {directory}")
        try:
            sidecar = VectorSidecar.model_validate_json(sidecar_path.read_bytes())
        except (OSError, ValidationError) as error:
            reason = type(error).__name__
            raise CorruptVectors(f"{sidecar_path} is missing or unreadable ({reason})") from None
        if sidecar.format != FORMAT:
            raise CorruptVectors(f"{sidecar_path} has format {sidecar.format}, expected {FORMAT}")
        if sidecar.model != expected_model or sidecar.dim != expected_dim:
            raise VectorModelMismatch(
                f"{index_path} holds {sidecar.model} vectors of dim {sidecar.dim}, "
                f"expected {expected_model} of dim {expected_dim}"
            )
        try:
            digest = _sha256(index_path)
        except OSError as error:
            raise CorruptVectors(f"{index_path} cannot be read ({error.strerror})") from None
        if digest != sidecar.sha256:
            raise CorruptVectors(f"{index_path} does not match the sha256 in {sidecar_path}")
        try:
            index: Any = faiss.read_index(str(index_path))
        except RuntimeError:
            raise CorruptVectors(f"{index_path} is not a readable FAISS index") from None
        expected_type: Any = faiss.IndexIDMap2 if sidecar.kind == "flat" else faiss.IndexIVF
        if (
            not isinstance(index, expected_type)
            or index.d != expected_dim
            or index.ntotal != sidecar.count
            or index.metric_type != faiss.METRIC_INNER_PRODUCT
        ):
            raise CorruptVectors(f"{index_path} does not hold what {sidecar_path} describes")
        loaded = cls(
            expected_model,
            expected_dim,
            ivf_threshold=ivf_threshold,
            nprobe=nprobe,
            use_gpu=use_gpu,
        )
        if sidecar.kind == "ivf":
            index.set_direct_map_type(_HASHTABLE_MAP)
            index.nprobe = min(nprobe, index.nlist)
        loaded._index, loaded._kind, loaded._trained_on = index, sidecar.kind, sidecar.trained_on
        loaded._ids = set(_stored_ids(index, sidecar.kind).tolist())
        return loaded

    def index_bytes(self) -> int:
        """Bytes the index occupies when serialised (vectors, codes, ids, centroids)."""
        with self._lock:
            return int(faiss.serialize_index(self._index).size)
