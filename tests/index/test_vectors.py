"""The vector index on real FAISS indexes and real files: exact and IVF search, replacement,
removal, persistence with corruption and model checks, file modes, concurrent use."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from index.vectors import (
    INDEX_FILE,
    SIDECAR_FILE,
    CorruptVectors,
    VectorIndex,
    VectorModelMismatch,
)

MODEL = "test-minilm"
DIM = 48


def clustered(count: int, seed: int, clusters: int = 30) -> np.ndarray:
    """Unit vectors around a fixed set of cluster centres, so nearest neighbours mean something."""
    centres = np.random.default_rng(1000).standard_normal((clusters, DIM))
    rng = np.random.default_rng(seed)
    points = centres[rng.integers(0, clusters, count)] + 0.8 * rng.standard_normal((count, DIM))
    unit: np.ndarray = (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)
    return unit


def exact_top(vectors: np.ndarray, ids: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    scores = vectors @ query
    return [int(ids[i]) for i in np.argsort(-scores, kind="stable")[:k]]


def recall_at_10(
    index: VectorIndex, vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray
) -> float:
    hits = 0
    for query in queries:
        found = {chunk for chunk, _ in index.search(query, 10)}
        hits += len(found & set(exact_top(vectors, ids, query, 10)))
    return hits / (10 * len(queries))


def test_search_returns_the_nearest_ids_best_first() -> None:
    vectors = clustered(300, seed=1)
    ids = np.arange(1000, 1300, dtype=np.int64)
    index = VectorIndex(MODEL, DIM)
    index.add(ids, vectors)
    assert len(index) == 300 and index.kind == "flat" and index.device == "cpu"
    for query in clustered(20, seed=2):
        results = index.search(query, 5)
        assert [chunk for chunk, _ in results] == exact_top(vectors, ids, query, 5)
        scores = [score for _, score in results]
        assert scores == sorted(scores, reverse=True) and -1.0 <= scores[-1] <= scores[0] <= 1.0
    own, score = index.search(vectors[17] * 3.0, 1)[0]  # scale does not matter: cosine
    assert own == 1017 and score == pytest.approx(1.0, abs=1e-5)


def test_exclude_and_several_queries() -> None:
    vectors = clustered(100, seed=3)
    index = VectorIndex(MODEL, DIM)
    index.add(range(100), vectors)
    top = [chunk for chunk, _ in index.search(vectors[5], 3)]
    assert top[0] == 5
    rest = [chunk for chunk, _ in index.search(vectors[5], 3, exclude=[5])]
    assert 5 not in rest and rest[:2] == top[1:]
    both = dict(index.search(np.stack([vectors[5], vectors[60]]), 2))
    assert set(both) == {5, 60} and all(
        score == pytest.approx(1.0, abs=1e-5) for score in both.values()
    )
    assert index.search(vectors[5], 500) and len(index.search(vectors[5], 500)) == 100


def test_re_adding_an_id_replaces_its_vector() -> None:
    vectors = clustered(50, seed=4)
    index = VectorIndex(MODEL, DIM)
    index.add(range(50), vectors)
    replacement = clustered(1, seed=99)[0]
    index.add([7], replacement[None, :])
    assert len(index) == 50 and 7 in index
    assert index.search(replacement, 1)[0][0] == 7
    old_hits = dict(index.search(vectors[7], 50))
    assert old_hits[7] < 0.999


def test_removed_ids_never_come_back() -> None:
    vectors = clustered(400, seed=5)
    index = VectorIndex(MODEL, DIM, ivf_threshold=300)
    index.add(range(400), vectors)
    assert str(index.kind) == "ivf"
    gone = set(range(0, 400, 2))
    assert index.remove([*sorted(gone), 10_000]) == len(gone)
    assert index.remove([0, 2]) == 0
    assert index.ids() == set(range(1, 400, 2)) and not index.contains(0)
    for query in vectors[:40]:
        assert not {chunk for chunk, _ in index.search(query, 400)} & gone
    # Shrinking well below the threshold goes back to exact search, still without them.
    index.remove(range(1, 300, 2))
    assert index.kind == "flat" and index.ids() == set(range(301, 400, 2))
    assert {chunk for chunk, _ in index.search(vectors[0], 400)} == index.ids()


@pytest.mark.parametrize("threshold", [10_000, 200])
def test_save_and_load_round_trip(tmp_path: Path, threshold: int) -> None:
    vectors = clustered(500, seed=6)
    ids = np.arange(500, dtype=np.int64) * 7 + 3
    index = VectorIndex(MODEL, DIM, ivf_threshold=threshold)
    index.add(ids, vectors)
    index.remove(ids[:10])
    cache = tmp_path / "workspace"
    index.save(cache)
    loaded = VectorIndex.load(cache, MODEL, DIM, ivf_threshold=threshold)
    assert loaded.kind == index.kind and loaded.ids() == index.ids() and len(loaded) == 490
    for query in clustered(25, seed=7):
        assert loaded.search(query, 10) == index.search(query, 10)
    sidecar = json.loads((cache / SIDECAR_FILE).read_text())
    assert sidecar["model"] == MODEL and sidecar["dim"] == DIM and sidecar["count"] == 490
    loaded.add([ids[0]], vectors[:1])  # still usable after loading
    assert loaded.search(vectors[0], 1)[0][0] == ids[0]


def test_nothing_saved_is_not_corruption(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        VectorIndex.load(tmp_path / "empty", MODEL, DIM)


def saved(tmp_path: Path) -> Path:
    index = VectorIndex(MODEL, DIM)
    index.add(range(200), clustered(200, seed=8))
    cache = tmp_path / "workspace"
    index.save(cache)
    return cache


def test_truncated_index_file_is_corrupt(tmp_path: Path) -> None:
    cache = saved(tmp_path)
    data = (cache / INDEX_FILE).read_bytes()
    (cache / INDEX_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptVectors, match="sha256"):
        VectorIndex.load(cache, MODEL, DIM)


def test_wrong_sidecar_hash_or_missing_sidecar_is_corrupt(tmp_path: Path) -> None:
    cache = saved(tmp_path)
    sidecar = json.loads((cache / SIDECAR_FILE).read_text())
    (cache / SIDECAR_FILE).write_text(json.dumps({**sidecar, "sha256": "0" * 64}))
    with pytest.raises(CorruptVectors, match="sha256"):
        VectorIndex.load(cache, MODEL, DIM)
    (cache / SIDECAR_FILE).write_text("{not json")
    with pytest.raises(CorruptVectors, match=SIDECAR_FILE):
        VectorIndex.load(cache, MODEL, DIM)
    (cache / SIDECAR_FILE).unlink()
    with pytest.raises(CorruptVectors, match="missing"):
        VectorIndex.load(cache, MODEL, DIM)


def test_a_matching_hash_over_a_garbage_file_is_still_corrupt(tmp_path: Path) -> None:
    cache = saved(tmp_path)
    (cache / INDEX_FILE).write_bytes(b"not a faiss index")
    sidecar = json.loads((cache / SIDECAR_FILE).read_text())
    digest = hashlib.sha256(b"not a faiss index").hexdigest()
    (cache / SIDECAR_FILE).write_text(json.dumps({**sidecar, "sha256": digest}))
    with pytest.raises(CorruptVectors, match="not a readable FAISS index"):
        VectorIndex.load(cache, MODEL, DIM)


def test_other_model_or_dim_is_a_mismatch(tmp_path: Path) -> None:
    cache = saved(tmp_path)
    with pytest.raises(VectorModelMismatch, match="other-model"):
        VectorIndex.load(cache, "other-model", DIM)
    with pytest.raises(VectorModelMismatch, match="dim 384"):
        VectorIndex.load(cache, MODEL, 384)


def test_switching_to_ivf_at_the_threshold_keeps_ids_and_recall() -> None:
    threshold = 3000
    vectors = clustered(4000, seed=9, clusters=40)
    ids = np.arange(4000, dtype=np.int64) + 1
    index = VectorIndex(MODEL, DIM, ivf_threshold=threshold)
    for start in range(0, 4000, 500):
        index.add(ids[start : start + 500], vectors[start : start + 500])
        assert index.kind == ("ivf" if start + 500 >= threshold else "flat")
    assert index.ids() == set(ids.tolist())
    assert recall_at_10(index, vectors, ids, clustered(100, seed=10, clusters=40)) >= 0.95


def test_files_are_private(tmp_path: Path) -> None:
    cache = tmp_path / "workspace"
    cache.mkdir(mode=0o755)
    cache.chmod(0o755)
    index = VectorIndex(MODEL, DIM)
    index.add(range(10), clustered(10, seed=11))
    index.save(cache)
    index.save(cache)  # overwriting keeps the modes and leaves no temporary files
    assert cache.stat().st_mode & 0o777 == 0o700
    assert sorted(path.name for path in cache.iterdir()) == sorted([INDEX_FILE, SIDECAR_FILE])
    for name in (INDEX_FILE, SIDECAR_FILE):
        assert (cache / name).stat().st_mode & 0o777 == 0o600


def test_bad_input_is_refused_with_a_clear_error() -> None:
    index = VectorIndex(MODEL, DIM)
    with pytest.raises(ValueError, match=r"shape \(48,\)"):
        index.add([1], np.ones((1, 12)))
    with pytest.raises(ValueError, match="2 ids but 1 vectors"):
        index.add([1, 2], np.ones((1, DIM)))
    with pytest.raises(ValueError, match="unique"):
        index.add([1, 1], np.ones((2, DIM)))
    with pytest.raises(ValueError, match="row 1 is all zeros"):
        index.add([1, 2], np.vstack([np.ones(DIM), np.zeros(DIM)]))
    with pytest.raises(ValueError, match="k must be positive"):
        index.search(np.ones(DIM), 0)
    assert index.search(np.ones(DIM), 5) == [] and len(index) == 0


def test_concurrent_adds_and_searches_end_consistent() -> None:
    """Two writers (one rebuilds the index while the other keeps changing it) and a reader."""
    count = 6000
    vectors = clustered(count, seed=12)
    index = VectorIndex(MODEL, DIM, ivf_threshold=1500)
    errors: list[BaseException] = []
    writers_done = threading.Barrier(3)
    done = threading.Event()

    def write(first: int) -> None:
        try:
            for start in range(first, count, 200):
                index.add(range(start, start + 100), vectors[start : start + 100])
                index.add([start], vectors[start][None, :])  # a replacement
                index.remove([start + 1])
        except BaseException as error:
            errors.append(error)
        finally:
            writers_done.wait()

    def read() -> None:
        try:
            queries = clustered(50, seed=13)
            while not done.is_set():
                for query in queries:
                    for chunk, score in index.search(query, 10, exclude=[3]):
                        assert chunk != 3 and -1.01 <= score <= 1.01
        except BaseException as error:
            errors.append(error)

    threads = [
        threading.Thread(target=write, args=(0,)),
        threading.Thread(target=write, args=(100,)),
        threading.Thread(target=read),
    ]
    for thread in threads:
        thread.start()
    writers_done.wait(timeout=120)
    done.set()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    expected = set(range(count)) - set(range(1, count, 100))
    assert index.kind == "ivf" and index.ids() == expected and len(index) == len(expected)
    assert {chunk for chunk, _ in index.search(vectors[0], count)} <= expected
    for chunk in range(0, count, 37):
        if chunk in expected:
            assert index.search(vectors[chunk], 1)[0][0] == chunk
