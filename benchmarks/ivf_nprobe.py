"""How many IVF lists a completion query should scan, and what HNSW would give instead.

Reads chunk embeddings and completion-query embeddings made by `benchmarks/gpu/real_vectors.py`
(fp16 `.npy` parts: real code chunks, and the 8-lines-above-the-cursor queries of the completion
path) and builds `VectorIndex` over them as the language server does (IVF + SQ8 above 20k
vectors, about sqrt(n) lists). For each nprobe: recall@10 against exact search, and single-query
search p50/p99 on one thread (as the language server asks). Beside it, FAISS's HNSW with 8-bit
scalar quantisation (M=32) at several efSearch values, the candidate to replace IVF.

    .venv/bin/python benchmarks/ivf_nprobe.py DIR   # DIR holds vectors-*.npy and queries.npy

Without a GPU, `BENCH_GPU_DEVICE=cpu OUT=DIR .venv/bin/python benchmarks/gpu/real_vectors.py`
makes DIR too (80k chunks take about 20 minutes on two cores; BENCH_VECTORS=30000 for less).
On 80k real vectors, recall@10 was 0.89 at nprobe 32 and 0.95 at 64, while the clustered
synthetic vectors of `vector_index.py` gave 0.98 at 32: the real partition is harder.

Prints JSON lines, a one-line summary, and a JSON summary last.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from index.vectors import NPROBE, VectorIndex

NPROBES = (8, 16, 32, 48, 64, 96)
EF_SEARCH = (32, 64, 128)


def timed(search: Any, queries: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Recall@10 against `truth` and single-query latency of `search(query) -> ids`."""
    latencies = []
    hits = 0
    for query, want in zip(queries, truth, strict=True):
        began = time.perf_counter()
        found = search(query)
        latencies.append((time.perf_counter() - began) * 1000)
        hits += len(set(want.tolist()) & set(found))
    ordered = sorted(latencies)
    return {
        "recall_at_10": round(hits / truth.size, 4),
        "search_p50_ms": round(statistics.median(ordered), 3),
        "search_p99_ms": round(ordered[int(0.99 * len(ordered))], 3),
    }


def main() -> None:
    folder = Path(sys.argv[1])
    parts = sorted(folder.glob("vectors-*.npy"), key=lambda p: int(p.stem.split("-")[1]))
    vectors = np.concatenate([np.load(p).astype(np.float32) for p in parts])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = np.load(folder / "queries.npy").astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    faiss.omp_set_num_threads(1)
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    _, truth = exact.search(queries, 10)
    ids = np.arange(len(vectors), dtype=np.int64)
    summary: dict[str, object] = {"vectors": len(vectors), "queries": len(queries)}
    lines = []
    for nprobe in NPROBES:
        index = VectorIndex("real", vectors.shape[1], nprobe=nprobe, use_gpu=False)
        for start in range(0, len(ids), 20_000):
            index.add(ids[start : start + 20_000], vectors[start : start + 20_000])

        def ivf_search(query: np.ndarray, index: VectorIndex = index) -> list[int]:
            return [chunk for chunk, _ in index.search(query, 10)]

        result = {"nprobe": nprobe, "kind": index.kind, **timed(ivf_search, queries, truth)}
        print(json.dumps({"bench": "ivf_nprobe", **result}), flush=True)
        summary[str(nprobe)] = result
        lines.append(f"{nprobe}: recall {result['recall_at_10']} p50 {result['search_p50_ms']} ms")
    # faiss's stubs type the quantizer argument as an object; the wheel takes the enum.
    untyped_faiss: Any = faiss
    hnsw: Any = untyped_faiss.IndexHNSWSQ(
        vectors.shape[1], faiss.ScalarQuantizer.QT_8bit, 32, faiss.METRIC_INNER_PRODUCT
    )
    hnsw.train(vectors[:20_000])
    began = time.perf_counter()
    hnsw.add(vectors)
    build_s = round(time.perf_counter() - began, 1)
    for ef in EF_SEARCH:
        hnsw.hnsw.efSearch = ef

        def hnsw_search(query: np.ndarray) -> list[int]:
            return [int(i) for i in hnsw.search(query[None, :], 10)[1][0]]

        result = {"hnsw_sq8_ef": ef, "build_s": build_s, **timed(hnsw_search, queries, truth)}
        print(json.dumps({"bench": "ivf_nprobe", **result}), flush=True)
        summary[f"hnsw_ef{ef}"] = result
        lines.append(
            f"hnsw ef {ef}: recall {result['recall_at_10']} p50 {result['search_p50_ms']} ms"
        )
    print(f"ivf_nprobe on {len(vectors)} real vectors (default {NPROBE}): " + "; ".join(lines))
    print(json.dumps({"bench": "ivf_nprobe", "summary": True, **summary}))


if __name__ == "__main__":
    main()
