"""faiss-gpu and the CUDA encoder beside the CPU paths, on a machine with an NVIDIA GPU.

Run there through `benchmarks/gpu/run_on_device.sh`, which installs the carried wheels and lets
faiss-gpu-cu12 load on a CUDA 13 image. BENCH_PARTS picks the parts (default "vectors,encoder"):

- vectors: `VectorIndex` searching its GPU copy against the same index on the CPU, on clustered
  384-d vectors at BENCH_SIZES (default 100k and 1M): the FAISS class that answered, the copy's
  build time, single-query search p50/p99 at k=10 (as the language server asks), recall@10 of
  each side against exact search.
- encoder: the CUDA encoder (fp16, batch 256) against torch fp32 on all CPU cores, on the same
  real code chunks (BENCH_FILES installed sources cut by the index's chunker): chunks/s, the
  cosine of GPU rows to CPU rows, the GPU batch-size sweep, query latency; then the whole
  background path (`SemanticIndex.sync`) with the CUDA encoder and faiss-gpu as a fraction of
  the bare encoder, and completion-path retrieval (`ranking.context`, every query newly
  embedded on the GPU) p50/p99.

Prints JSON lines, a one-line summary, and a JSON summary last; exits 1 when no GPU is seen.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from index_query import _cold, _cursors
from index_tree import build_tree

from index.embeddings import Encoder, EncoderConfig, load_encoder
from index.ranking import context
from index.semantic import SemanticIndex, embedding_text
from index.workspace import WorkspaceIndex

PARTS = os.environ.get("BENCH_PARTS", "vectors,encoder,pipeline").split(",")
SIZES = [int(s) for s in os.environ.get("BENCH_SIZES", "100000,1000000").split(",")]
FILES = int(os.environ.get("BENCH_FILES", "800"))
CPU_SAMPLE = int(os.environ.get("BENCH_CPU_SAMPLE", "768"))
# BENCH_GPU_DEVICE=cpu with BENCH_DRY_RUN=1 checks the script on a machine without a GPU.
GPU_DEVICE: Literal["cpu", "cuda"] = (
    "cpu" if os.environ.get("BENCH_GPU_DEVICE") == "cpu" else "cuda"
)
MODEL = Path(os.environ["BENCH_MODEL"]) if os.environ.get("BENCH_MODEL") else None
QUERIES = 200
summary: dict[str, Any] = {}


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 3)


def recall(truth: np.ndarray, found: list[list[int]]) -> float:
    hits = sum(len(set(row.tolist()) & set(got)) for row, got in zip(truth, found, strict=True))
    return round(hits / truth.size, 4)


def vectors_part() -> None:
    import faiss
    from vector_index import DIM, clustered, timed_searches

    from index.vectors import GPU_REFRESH_QUIET_S, VectorIndex

    for count in SIZES:
        vectors, queries = clustered(count, seed=1), clustered(QUERIES, seed=2)
        exact = faiss.IndexFlatIP(DIM)
        exact.add(vectors)
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        _, truth = exact.search(queries, 10)
        sides: dict[str, dict[str, Any]] = {}
        for side in ("gpu", "cpu"):
            faiss.omp_set_num_threads(os.cpu_count() or 1)  # building: all cores
            index = VectorIndex("bench-clustered", DIM, use_gpu=side == "gpu")
            began = time.perf_counter()
            ids = np.arange(count, dtype=np.int64)
            for start in range(0, count, 50_000):
                index.add(ids[start : start + 50_000], vectors[start : start + 50_000])
            add_s = time.perf_counter() - began
            faiss.omp_set_num_threads(1)  # searching: one thread, as in the language server
            time.sleep(GPU_REFRESH_QUIET_S + 0.1)
            began = time.perf_counter()
            index.search(queries[0], 10)  # builds the GPU copy on the GPU side
            first_ms = (time.perf_counter() - began) * 1000
            latencies, found = timed_searches(index, queries)
            sides[side] = {
                "device": index.device,
                "kind": index.kind,
                "searched_by": index.searched_by,
                "add_s": round(add_s, 2),
                "first_search_ms": round(first_ms, 1),
                "search_p50_ms": percentile(latencies, 0.5),
                "search_p99_ms": percentile(latencies, 0.99),
                "recall_at_10": recall(truth, found),
            }
            emit({"bench": "gpu_vectors", "n": count, "side": side, **sides[side]})
        key = f"vectors_{count // 1000}k"
        summary[key] = {
            "gpu": sides["gpu"],
            "cpu": sides["cpu"],
            "search_p50_cpu_over_gpu": round(
                sides["cpu"]["search_p50_ms"] / sides["gpu"]["search_p50_ms"], 2
            ),
        }


def encoder_part(tmp: Path) -> None:
    os.environ["BASTION_INDEX_CACHE"] = str(tmp / "cache")
    root = build_tree(tmp / "tree", FILES)
    workspace = WorkspaceIndex([root], workers=min(8, os.cpu_count() or 1))
    workspace.refresh()
    ids = sorted(workspace.chunk_ids())
    chunks = workspace.chunks(ids)
    texts = [embedding_text(chunks[i]) for i in ids]
    gpu = load_encoder(
        EncoderConfig(model_path=MODEL, device=GPU_DEVICE, backend="torch", low_priority=False)
    )
    cpu = load_encoder(
        EncoderConfig(
            model_path=MODEL,
            device="cpu",
            backend="torch",
            threads=os.cpu_count(),
            low_priority=False,
        )
    )
    gpu.encode(texts)  # warm-up: kernels, allocator, and each padded shape met once
    began = time.perf_counter()
    gpu.encode(texts)
    gpu_rate = len(texts) / (time.perf_counter() - began)
    sample = texts[:: max(1, len(texts) // CPU_SAMPLE)][:CPU_SAMPLE]
    cpu.encode(sample[:32])
    began = time.perf_counter()
    cpu_rows = cpu.encode(sample)
    cpu_rate = len(sample) / (time.perf_counter() - began)
    cosine = np.sum(gpu.encode(sample) * cpu_rows, axis=1)
    sweep: dict[str, float] = {}
    for batch in (16, 64, 128, 256, 512, 1024):
        swept = load_encoder(
            EncoderConfig(
                model_path=MODEL,
                device=GPU_DEVICE,
                backend="torch",
                batch_size=batch,
                low_priority=False,
            )
        )
        swept.encode(texts[:4096])
        began = time.perf_counter()
        swept.encode(texts[:4096])
        sweep[str(batch)] = round(min(4096, len(texts)) / (time.perf_counter() - began), 1)
        swept.close()
    query_ms: dict[str, float] = {}
    for name, encoder in (("gpu", gpu), ("cpu", cpu)):
        latencies = []
        for text in texts[:QUERIES]:
            began = time.perf_counter()
            encoder.encode_query(text)
            latencies.append((time.perf_counter() - began) * 1000)
        query_ms[f"{name}_p50"] = percentile(latencies, 0.5)
        query_ms[f"{name}_p99"] = percentile(latencies, 0.99)
    encoder_record = {
        "gpu_name": _gpu_name(),
        "gpu_device": gpu.device,
        "gpu_batch": gpu.batch_size,
        "chunks": len(texts),
        "gpu_chunks_per_s": round(gpu_rate, 1),
        "cpu_chunks_per_s": round(cpu_rate, 1),
        "cpu_threads": os.cpu_count(),
        "gpu_over_cpu": round(gpu_rate / cpu_rate, 1),
        "cosine_gpu_fp16_to_cpu_fp32": {
            "mean": round(float(cosine.mean()), 5),
            "min": round(float(cosine.min()), 5),
        },
        "gpu_batch_sweep_chunks_per_s": sweep,
        "query_embed_ms": query_ms,
    }
    emit({"bench": "gpu_encoder", **encoder_record})
    summary["encoder"] = encoder_record
    cpu.close()
    if "pipeline" in PARTS:
        pipeline_part(workspace, gpu, gpu_rate)
    gpu.close()


def pipeline_part(workspace: WorkspaceIndex, gpu: Encoder, gpu_rate: float) -> None:
    import faiss

    from index.vectors import GPU_REFRESH_QUIET_S

    faiss.omp_set_num_threads(1)
    semantic = SemanticIndex(workspace.cache_dir, encoder=gpu)
    report = semantic.sync(workspace)
    sync_rate = report.embedded / report.seconds
    vectors = semantic.vectors
    time.sleep(GPU_REFRESH_QUIET_S + 0.1)
    cursors = _cold(_cursors(workspace, QUERIES))
    for key, text, line, col in cursors[:5]:
        context(workspace, key, text, line, col, 3, vectors=semantic)  # builds the GPU copy
    latencies = []
    for key, text, line, col in cursors[5:]:
        began = time.perf_counter()
        context(workspace, key, text, line, col, 3, vectors=semantic)
        latencies.append((time.perf_counter() - began) * 1000)
    pipeline = {
        "embedded": report.embedded,
        "sync_chunks_per_s": round(sync_rate, 1),
        "sync_over_bare_encoder": round(sync_rate / gpu_rate, 3),
        "vectors_device": vectors.device,
        "vectors_searched_by": vectors.searched_by,
        "completion_cold_p50_ms": percentile(latencies, 0.5),
        "completion_cold_p99_ms": percentile(latencies, 0.99),
        "completion_requests": len(latencies),
    }
    emit({"bench": "gpu_pipeline", **pipeline})
    summary["pipeline"] = pipeline
    semantic.close()


def _gpu_name() -> str:
    import torch

    return str(torch.cuda.get_device_name(0)) if torch.cuda.is_available() else "no GPU"


def main() -> None:
    if "vectors" in PARTS or "pipeline" in PARTS:
        import faiss

        gpus = faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0
        emit({"bench": "gpu_index", "faiss": faiss.__version__, "faiss_gpus": gpus})
        if gpus == 0 and not os.environ.get("BENCH_DRY_RUN"):
            print("gpu_index: faiss sees no GPU (is faiss-gpu installed and CUDA loadable?)")
            sys.exit(1)
    if "vectors" in PARTS:
        vectors_part()
    if "encoder" in PARTS or "pipeline" in PARTS:
        with tempfile.TemporaryDirectory(prefix="bastion-gpu-") as tmp:
            encoder_part(Path(tmp))
    lines = []
    for key, value in summary.items():
        if key.startswith("vectors_"):
            lines.append(
                f"{key}: gpu p50 {value['gpu']['search_p50_ms']} ms ({value['gpu']['searched_by']}"
                f", recall {value['gpu']['recall_at_10']}) vs cpu {value['cpu']['search_p50_ms']}"
                f" ms ({value['cpu']['recall_at_10']})"
            )
    if "encoder" in summary:
        e = summary["encoder"]
        lines.append(
            f"encoder: {e['gpu_chunks_per_s']} chunks/s on {e['gpu_name']} vs"
            f" {e['cpu_chunks_per_s']} on {e['cpu_threads']} cores ({e['gpu_over_cpu']}x),"
            f" cosine {e['cosine_gpu_fp16_to_cpu_fp32']['mean']}"
        )
    if "pipeline" in summary:
        p = summary["pipeline"]
        lines.append(
            f"sync {p['sync_chunks_per_s']} chunks/s ({p['sync_over_bare_encoder']} of bare),"
            f" completion cold p50 {p['completion_cold_p50_ms']} ms"
        )
    print("gpu_index: " + "; ".join(lines))
    print(json.dumps({"bench": "gpu_index", "summary": True, **summary}))


if __name__ == "__main__":
    main()
