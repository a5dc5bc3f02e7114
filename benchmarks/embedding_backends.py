"""Embedding backends side by side on the same real code chunks: torch, ONNX fp32, ONNX int8.

Measures, in one run: batch throughput (chunks/s; ONNX at 1 and 2 intra-op threads), cosine of
each backend against sentence-transformers fp32 on torch (mean, min, p1), single-query latency
(p50/p99, with the query cut to its last 64 tokens and uncut), ONNX export time, and cold model
load time (a fresh process per backend, the export cache warm).

Chunks: the standard library of the running Python and this repository, cut by the index's
chunker; a seeded sample of BENCH_CHUNKS of them (default 160 keeps the run near 3 minutes on
2 loaded cores; BENCH_CHUNKS=3000 for the few-thousand-chunk run). Prints one JSON line per
measurement, a one-line summary, and a JSON summary as the last line.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from index.chunker import chunk_file
from index.embeddings import EncoderConfig, load_encoder
from index.encoders.model_folder import read_model_folder
from index.encoders.onnx_cache import ensure_onnx_export

CHUNKS = int(os.environ.get("BENCH_CHUNKS", "160"))
QUERIES = int(os.environ.get("BENCH_QUERIES", "150"))
SLICE = 32
REPO = Path(__file__).resolve().parent.parent
SOURCES = ("index", "inference", "lsp_server", "audit_proxy", "bastion")


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def source_files() -> list[Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py"))
    files += sorted(p for p in stdlib.glob("[a-z]*/*.py") if "test" not in p.parts[-2])
    for package in SOURCES:
        files += sorted((REPO / package).rglob("*.py"))
    return files


def real_chunks(files: list[Path]) -> list[str]:
    chunks: list[str] = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        chunks.extend(c.text for c in chunk_file(str(path), text).chunks if c.text.strip())
    return chunks


def cursor_queries(files: list[Path], count: int) -> list[str]:
    """The ~10 lines before a random cursor, as the completion path embeds them."""
    rng = random.Random(11)
    out: list[str] = []
    while len(out) < count:
        lines = rng.choice(files).read_text(encoding="utf-8", errors="replace").splitlines()
        if len(lines) > 20:
            end = rng.randrange(10, len(lines))
            out.append("\n".join(lines[end - 10 : end]))
    return out


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def cosines(rows: NDArray[np.float32], reference: NDArray[np.float32]) -> dict[str, float]:
    values = (rows.astype(np.float64) * reference).sum(axis=1)
    return {
        "cos_mean": round(float(values.mean()), 5),
        "cos_min": round(float(values.min()), 5),
        "cos_p1": round(float(np.percentile(values, 1)), 5),
    }


def cold_load_seconds(backend: str, cache: Path) -> float:
    probe = (
        "import sys, time; sys.path.insert(0, sys.argv[1]); t = time.perf_counter();"
        "from pathlib import Path; from index.embeddings import EncoderConfig, load_encoder;"
        "e = load_encoder(EncoderConfig(backend=sys.argv[2], device='cpu',"
        " cache_dir=Path(sys.argv[3])));"
        "print(time.perf_counter() - t); e.close()"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(REPO), backend, str(cache)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(result.stdout.strip().splitlines()[-1])


def encoder_config(backend: str, cache: Path, **settings: Any) -> EncoderConfig:
    return EncoderConfig(
        backend=backend,  # type: ignore[arg-type]
        device="cpu",
        cache_dir=cache,
        low_priority=False,  # measure the engine, not the scheduler
        **settings,
    )


def measure_throughput(sample: list[str], cache: Path) -> dict[str, dict[str, Any]]:
    """Every backend on every slice of the sample in a shuffled order, so that load from other
    processes falls on all of them alike; torch fp32 at 2 threads is the cosine reference."""
    runs = [("torch", 2), ("onnx", 1), ("onnx", 2), ("onnx-int8", 1), ("onnx-int8", 2)]
    encoders = {f"{b}@{t}": load_encoder(encoder_config(b, cache, threads=t)) for b, t in runs}
    seconds = dict.fromkeys(encoders, 0.0)
    rows: dict[str, list[NDArray[np.float32]]] = {key: [] for key in encoders}
    order = list(encoders)
    for encoder in encoders.values():
        encoder.encode(sample[:4])
    for start in range(0, len(sample), SLICE):
        part = sample[start : start + SLICE]
        random.Random(start).shuffle(order)
        for key in order:
            began = time.perf_counter()
            rows[key].append(encoders[key].encode(part))
            seconds[key] += time.perf_counter() - began
    reference = np.concatenate(rows["torch@2"])
    out: dict[str, dict[str, Any]] = {}
    for key, encoder in encoders.items():
        backend, threads = key.split("@")
        record: dict[str, Any] = {
            "measure": "throughput",
            "backend": backend,
            "threads": int(threads),
            "chunks_per_s": round(len(sample) / seconds[key], 2),
            **cosines(np.concatenate(rows[key]), reference),
        }
        emit(record)
        out[key] = record
        encoder.close()
    return out


def measure_queries(queries: list[str], cache: Path) -> dict[str, dict[str, Any]]:
    """Single-query latency, each query timed on every backend in turn (same load for all)."""
    runs = [
        ("onnx-int8", 32),
        ("onnx-int8", 64),
        ("onnx-int8", 256),
        ("onnx", 64),
        ("onnx", 256),
        ("torch", 64),
    ]
    encoders = {
        f"{b}@{n}": load_encoder(encoder_config(b, cache, query_max_tokens=n)) for b, n in runs
    }
    latencies: dict[str, list[float]] = {key: [] for key in encoders}
    for index, query in enumerate(queries[:10] + queries):
        for key, encoder in encoders.items():
            began = time.perf_counter()
            encoder.encode_query(query)
            if index >= 10:  # the first ten warm up
                latencies[key].append((time.perf_counter() - began) * 1000)
    out: dict[str, dict[str, Any]] = {}
    for key, encoder in encoders.items():
        backend, limit = key.split("@")
        tokens = statistics.median(min(encoder.count_tokens(q), int(limit)) for q in queries)
        record = {
            "measure": "query_latency_ms",
            "backend": backend,
            "query_max_tokens": int(limit),
            "median_tokens": tokens,
            "p50": round(percentile(latencies[key], 0.5), 2),
            "p99": round(percentile(latencies[key], 0.99), 2),
        }
        emit(record)
        out[f"query:{key}"] = record
        encoder.close()
    return out


def main() -> None:
    files = source_files()
    pool = real_chunks(files)
    sample = random.Random(7).sample(pool, min(CHUNKS, len(pool)))
    queries = cursor_queries(files, QUERIES)
    emit({"pool_chunks": len(pool), "sample_chunks": len(sample), "queries": len(queries)})
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bastion-embed-bench-") as tmp:
        cache = Path(tmp)
        started = time.perf_counter()
        export = ensure_onnx_export(read_model_folder(None), cache)
        quality = export.metadata.int8_cosine
        emit(
            {
                "measure": "export",
                "seconds": round(time.perf_counter() - started, 2),
                "int8_vs_torch_at_export": quality.model_dump(),
                "fused_ops": export.metadata.fused_ops,
            }
        )
        results.update(measure_throughput(sample, cache))
        results.update(measure_queries(queries, cache))
        for backend in ("torch", "onnx", "onnx-int8"):
            seconds = cold_load_seconds(backend, cache)
            emit({"measure": "cold_load", "backend": backend, "seconds": round(seconds, 2)})
            results[f"load:{backend}"] = {"seconds": round(seconds, 2)}

    def speed(key: str) -> float:
        return float(results[key]["chunks_per_s"])

    summary = {
        "summary": "embedding_backends",
        "chunks": len(sample),
        "onnx_vs_torch_throughput": round(speed("onnx@2") / speed("torch@2"), 2),
        "int8_vs_torch_throughput": round(speed("onnx-int8@2") / speed("torch@2"), 2),
        "int8_2_vs_1_threads": round(speed("onnx-int8@2") / speed("onnx-int8@1"), 2),
        "onnx_2_vs_1_threads": round(speed("onnx@2") / speed("onnx@1"), 2),
        "int8_cos_mean": results["onnx-int8@2"]["cos_mean"],
        "int8_cos_min": results["onnx-int8@2"]["cos_min"],
        "query_p50_ms": {k[6:]: v["p50"] for k, v in results.items() if k.startswith("query:")},
        "query_p99_ms": {k[6:]: v["p99"] for k, v in results.items() if k.startswith("query:")},
        "cold_load_s": {k[5:]: v["seconds"] for k, v in results.items() if k.startswith("load:")},
    }
    print(
        f"{len(sample)} chunks: torch {speed('torch@2')}/s, onnx {speed('onnx@2')}/s, "
        f"int8 {speed('onnx-int8@2')}/s (x{summary['int8_vs_torch_throughput']} torch, "
        f"cos mean {summary['int8_cos_mean']} min {summary['int8_cos_min']}); "
        f"query p50 int8@64 {summary['query_p50_ms']['onnx-int8@64']} ms; "
        f"cold load {summary['cold_load_s']}"
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
