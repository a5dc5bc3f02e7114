"""Real chunk and completion-query embeddings in bulk, made on a GPU for CPU-side ANN studies.

Embedding 80k real chunks takes 20 minutes on two CPU cores and seconds on a GPU. This cuts
BENCH_FILES installed sources with the index's chunker, embeds the first BENCH_VECTORS chunks
with the CUDA encoder, and embeds BENCH_QUERIES completion queries (`ranking.vector_query` at
call sites, as the completion path asks). It writes fp16 `.npy` parts of at most 20k rows to
`$OUT` (the device tool brings back files of up to 16 MiB), read by `benchmarks/ivf_nprobe.py`.

    BENCH_MODEL=.gpu-b/minilm bash benchmarks/gpu/run_on_device.sh   # with BENCH_SCRIPT set
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from index_query import _cold, _cursors
from index_tree import build_tree

from index.embeddings import EncoderConfig, load_encoder
from index.ranking import vector_query
from index.semantic import embedding_text
from index.workspace import WorkspaceIndex

FILES = int(os.environ.get("BENCH_FILES", "3000"))
VECTORS = int(os.environ.get("BENCH_VECTORS", "80000"))
QUERIES = int(os.environ.get("BENCH_QUERIES", "600"))
PART_ROWS = 20_000
DEVICE = "cpu" if os.environ.get("BENCH_GPU_DEVICE") == "cpu" else "cuda"
MODEL = Path(os.environ["BENCH_MODEL"]) if os.environ.get("BENCH_MODEL") else None


def main() -> None:
    out = Path(os.environ.get("OUT", "."))
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bastion-vectors-") as tmp:
        os.environ["BASTION_INDEX_CACHE"] = str(Path(tmp) / "cache")
        root = build_tree(Path(tmp) / "tree", FILES)
        workspace = WorkspaceIndex([root], workers=min(16, os.cpu_count() or 1))
        workspace.refresh()
        ids = sorted(workspace.chunk_ids())[:VECTORS]
        chunks = workspace.chunks(ids)
        texts = [embedding_text(chunks[i]) for i in ids]
        config = EncoderConfig(model_path=MODEL, device=DEVICE, backend="torch", low_priority=False)
        encoder = load_encoder(config)
        indexed = time.perf_counter()
        rows = encoder.encode(texts)
        embedded = time.perf_counter()
        queries = []
        for _key, text, line, _col in _cold(_cursors(workspace, QUERIES)):
            queries.append(encoder.encode_query(vector_query(text.splitlines(), line)))
        encoder.close()
    for part, start in enumerate(range(0, len(rows), PART_ROWS)):
        np.save(out / f"vectors-{part}.npy", rows[start : start + PART_ROWS].astype(np.float16))
    np.save(out / "queries.npy", np.asarray(queries, dtype=np.float16))
    print(
        json.dumps(
            {
                "bench": "real_vectors",
                "files": FILES,
                "vectors": len(rows),
                "queries": len(queries),
                "query_max_tokens": encoder.query_max_tokens,
                "device": encoder.device,
                "index_s": round(indexed - began, 1),
                "embed_s": round(embedded - indexed, 1),
                "chunks_per_s": round(len(rows) / (embedded - indexed), 1),
            }
        )
    )


if __name__ == "__main__":
    main()
