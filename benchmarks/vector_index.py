"""The vector index, exact vs IVF(SQ8) side by side, at 10k and 100k 384-d vectors.

The vectors are random but clustered in two levels (64 topics x 32 subtopics, plus noise), so
nearest neighbours mean something and IVF recall is not trivially 1. For each size: add throughput
(batches of 500, including any exact->IVF switch and retraining), single-query search p50/p99 for
k=10, recall@10 of IVF against exact, the cost of removing ids, save and load time, and index bytes.
FAISS runs on BENCH_THREADS OpenMP threads (default 1: one query at a time, as the language server
asks them; OpenMP's spinning threads cost far more than they give on a loaded machine).

Prints one JSON line per index and size, a one-line summary, and a JSON line with the ratios last.
BENCH_SIZES=10000,100000 BENCH_QUERIES=200 BENCH_NOISE=2.0 to change the run.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from index.vectors import INDEX_FILE, IVF_THRESHOLD, NPROBE, VectorIndex

DIM = 384
MODEL = "bench-clustered"
SIZES = [int(size) for size in os.environ.get("BENCH_SIZES", "10000,100000").split(",")]
QUERIES = int(os.environ.get("BENCH_QUERIES", "200"))
NOISE = float(os.environ.get("BENCH_NOISE", "2.0"))
THREADS = int(os.environ.get("BENCH_THREADS", "1"))
ADD_BATCH = 500
TOPICS, SUBTOPICS = 64, 32


def clustered(count: int, seed: int) -> np.ndarray:
    centres = np.random.default_rng(0)
    topics = centres.standard_normal((TOPICS, DIM)).astype(np.float32)
    subtopics = centres.standard_normal((TOPICS * SUBTOPICS, DIM)).astype(np.float32)
    rng = np.random.default_rng(seed)
    chosen = rng.integers(0, TOPICS * SUBTOPICS, count)
    points = topics[chosen // SUBTOPICS] + 0.7 * subtopics[chosen]
    points += NOISE * rng.standard_normal((count, DIM)).astype(np.float32)
    normalised: np.ndarray = points / np.linalg.norm(points, axis=1, keepdims=True)
    return normalised


@dataclass
class Result:
    n: int
    index: str
    kind: str
    add_vectors_per_s: int
    search_p50_ms: float
    search_p99_ms: float
    remove_100_ms: float
    save_ms: float
    load_ms: float
    index_bytes: int
    nprobe: int | None = None
    recall_at_10: float | None = None


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def timed_searches(index: VectorIndex, queries: np.ndarray) -> tuple[list[float], list[list[int]]]:
    """Single-query k=10 searches: each one's milliseconds and the ids it found."""
    latencies: list[float] = []
    found: list[list[int]] = []
    for query in queries:
        started = time.perf_counter()
        results = index.search(query, 10)
        latencies.append((time.perf_counter() - started) * 1000)
        found.append([chunk for chunk, _ in results])
    return latencies, found


def measure(
    label: str, threshold: int, vectors: np.ndarray, queries: np.ndarray
) -> tuple[Result, list[list[int]]]:
    count = len(vectors)
    ids = np.arange(count, dtype=np.int64)
    index = VectorIndex(MODEL, DIM, ivf_threshold=threshold, use_gpu=False)
    started = time.perf_counter()
    for start in range(0, count, ADD_BATCH):
        index.add(ids[start : start + ADD_BATCH], vectors[start : start + ADD_BATCH])
    add_s = time.perf_counter() - started
    latencies, found = timed_searches(index, queries)
    with tempfile.TemporaryDirectory(prefix="bastion-vectors-") as tmp:
        cache = Path(tmp) / "cache"
        started = time.perf_counter()
        index.save(cache)
        save_ms = (time.perf_counter() - started) * 1000
        index_bytes = (cache / INDEX_FILE).stat().st_size
        started = time.perf_counter()
        loaded = VectorIndex.load(cache, MODEL, DIM, ivf_threshold=threshold, use_gpu=False)
        load_ms = (time.perf_counter() - started) * 1000
        assert len(loaded) == count
    # Remove 1000 ids, 100 per call (a file's chunks at a time), then put them back.
    removed = ids[:: max(1, count // 1000)][:1000]
    started = time.perf_counter()
    for start in range(0, removed.size, 100):
        index.remove(removed[start : start + 100])
    remove_ms = (time.perf_counter() - started) * 1000 / (removed.size / 100)
    result = Result(
        n=count,
        index=label,
        kind=index.kind,
        add_vectors_per_s=round(count / add_s),
        search_p50_ms=round(statistics.median(latencies), 3),
        search_p99_ms=round(_percentile(latencies, 0.99), 3),
        remove_100_ms=round(remove_ms, 2),
        save_ms=round(save_ms, 1),
        load_ms=round(load_ms, 1),
        index_bytes=index_bytes,
    )
    return result, found


def main() -> None:
    faiss.omp_set_num_threads(THREADS)
    ratios: dict[str, float] = {}
    summary: list[str] = []
    for count in SIZES:
        vectors = clustered(count, seed=1)
        queries = clustered(QUERIES, seed=2)
        exact, truth = measure("exact", count + 1, vectors, queries)
        # Below the default threshold the IVF side is forced, to compare like with like.
        ivf, approximate = measure("ivf_sq8", min(IVF_THRESHOLD, count // 2), vectors, queries)
        recall = sum(
            len(set(want) & set(got)) for want, got in zip(truth, approximate, strict=True)
        ) / (10 * len(truth))
        ivf.nprobe, ivf.recall_at_10 = NPROBE, round(recall, 4)
        for result in (exact, ivf):
            print(json.dumps({"bench": "vector_index", **asdict(result)}), flush=True)
        key = f"{count // 1000}k"
        ratios[f"search_p50_exact_over_ivf_{key}"] = round(
            exact.search_p50_ms / ivf.search_p50_ms, 2
        )
        ratios[f"bytes_exact_over_ivf_{key}"] = round(exact.index_bytes / ivf.index_bytes, 2)
        ratios[f"recall_at_10_ivf_{key}"] = round(recall, 4)
        summary.append(
            f"{key}: search p50 exact {exact.search_p50_ms} ms vs ivf {ivf.search_p50_ms} ms"
            f" (recall@10 {recall:.3f}, nprobe {NPROBE}), {exact.index_bytes / 1e6:.0f} MB vs"
            f" {ivf.index_bytes / 1e6:.0f} MB, load {exact.load_ms} / {ivf.load_ms} ms"
        )
    print("vector_index: " + "; ".join(summary) + f" [threads={THREADS}, noise={NOISE}]")
    print(json.dumps({"bench": "vector_index", "summary": True, **ratios}))


if __name__ == "__main__":
    main()
