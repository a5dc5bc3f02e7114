"""(a) Indexing throughput with embeddings, as a fraction of the bare encoder (goal >= 0.9).

On the chunks of a tree of real sources, in one process and with one loaded encoder: the bare
encoder (`Encoder.encode` on the chunks' texts, in the same batches) against the whole
background path (`SemanticIndex.sync`: read chunks from the store, build the texts, encode, add
to FAISS, persist). Rounds alternate so load on the machine hits both alike.

    .venv/bin/python benchmarks/index_embedding.py   # BENCH_FILES (40), BENCH_ROUNDS (2)

Prints JSON lines, a one-line summary, and a JSON summary last.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from index_tree import build_tree

from index.embeddings import load_encoder
from index.semantic import EMBED_BATCH, VECTORS_DIR, SemanticIndex, embedding_text
from index.workspace import WorkspaceIndex

FILES = int(os.environ.get("BENCH_FILES", "40"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bastion-bench-") as tmp:
        os.environ["BASTION_INDEX_CACHE"] = str(Path(tmp) / "cache")
        root = build_tree(Path(tmp) / "tree", FILES)
        workspace = WorkspaceIndex([root], workers=1)
        workspace.refresh()
        ids = sorted(workspace.chunk_ids())
        chunks = workspace.chunks(ids)
        texts = [embedding_text(chunks[chunk_id]) for chunk_id in ids]
        encoder = load_encoder()
        encoder.encode(texts[:8])  # warm up
        print(json.dumps({"files": FILES, "chunks": len(ids), "backend": encoder.backend}))
        bare: list[float] = []
        synced: list[float] = []
        for round_number in range(ROUNDS):
            began = time.perf_counter()
            for start in range(0, len(texts), EMBED_BATCH):
                encoder.encode(texts[start : start + EMBED_BATCH])
            bare.append(len(texts) / (time.perf_counter() - began))
            shutil.rmtree(workspace.cache_dir / VECTORS_DIR, ignore_errors=True)
            semantic = SemanticIndex(workspace.cache_dir, encoder=encoder)
            began = time.perf_counter()
            report = semantic.sync(workspace)
            synced.append(report.embedded / (time.perf_counter() - began))
            assert report.embedded == len(ids) and len(semantic.vectors) == len(ids)
            semantic.close()
            print(
                json.dumps(
                    {
                        "round": round_number,
                        "bare_chunks_per_s": round(bare[-1], 2),
                        "index_chunks_per_s": round(synced[-1], 2),
                    }
                )
            )
        encoder.close()
        bare_rate, index_rate = statistics.median(bare), statistics.median(synced)
        fraction = index_rate / bare_rate
        print(
            f"{len(ids)} chunks ({encoder.backend}): bare encoder {bare_rate:.1f} chunks/s, "
            f"indexing with embeddings {index_rate:.1f} chunks/s = {fraction:.2f} of the encoder"
        )
        print(
            json.dumps(
                {
                    "chunks": len(ids),
                    "backend": encoder.backend,
                    "bare_chunks_per_s": round(bare_rate, 2),
                    "index_chunks_per_s": round(index_rate, 2),
                    "fraction_of_encoder": round(fraction, 3),
                    "goal": 0.9,
                }
            )
        )


if __name__ == "__main__":
    main()
