"""How long the completion path's vector query should be: quality and latency per token cut.

The completion path embeds the complete lines above the cursor (`ranking.vector_query`), keeping
only their last N tokens. On the shared eval's cases (real call sites in flask and requests
whose callee is defined in another file; `../shared/eval`), this measures for each N, with the
same chunk vectors: vector-only recall@5 and MRR (the callee's definition among the nearest
chunks outside the edited file), and single-query embedding latency p50/p90 on this machine.

    .venv/bin/python benchmarks/vector_query_length.py [--eval ../shared/eval] [--work DIR]

Prints JSON lines, a one-line summary, and a JSON summary last.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from index.embeddings import EncoderConfig, load_encoder
from index.ranking import VECTOR_EXTRA, vector_query
from index.semantic import SemanticIndex
from index.workspace import WorkspaceIndex

CUTS = (16, 24, 32, 48, 64)
K = 5


def eval_module(eval_dir: Path) -> Any:
    spec = importlib.util.spec_from_file_location("run_retrieval", eval_dir / "run_retrieval.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cases_by_dist(eval_dir: Path) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((eval_dir / "retrieval").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            case = json.loads(line)
            out.setdefault(case["dist"], []).append(case)
    return out


def rank_of_gold(workspace: WorkspaceIndex, ids: list[int], case: dict[str, Any]) -> int | None:
    """1-based rank of the first chunk outside the edited file that overlaps the callee."""
    chunks = workspace.chunks(ids)
    gold = case["gold"]
    rank = 0
    for chunk_id in ids:
        ref = chunks.get(chunk_id)
        if ref is None or ref.path == case["file"]:
            continue
        rank += 1
        if rank > K:
            return None
        overlaps = ref.chunk.start_line <= gold["end"] and gold["start"] <= ref.chunk.end_line
        if ref.path == gold["file"] and overlaps:
            return rank
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--eval", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "eval"
    )
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    run_retrieval = eval_module(args.eval)
    work = args.work or Path(tempfile.mkdtemp(prefix="bastion-qlen-"))
    os.environ["BASTION_INDEX_CACHE"] = str(work / "cache")
    encoders = {cut: load_encoder(EncoderConfig(query_max_tokens=cut)) for cut in CUTS}
    ranks: dict[int, list[int | None]] = {cut: [] for cut in CUTS}
    latency: dict[int, list[float]] = {cut: [] for cut in CUTS}
    for dist, cases in cases_by_dist(args.eval).items():
        root = run_retrieval.fetch_sdist(dist, work)
        workspace = WorkspaceIndex([root])
        workspace.refresh()
        semantic = SemanticIndex(workspace.cache_dir, encoder=encoders[CUTS[-1]])
        semantic.sync(workspace)
        vectors = semantic.vectors
        for case in cases:
            lines = (root / case["file"]).read_text(encoding="utf-8").splitlines()
            query = vector_query(lines, case["line"])
            for cut, encoder in encoders.items():
                began = time.perf_counter()
                vector = encoder.encode_query(query)
                latency[cut].append((time.perf_counter() - began) * 1000)
                hits = [chunk for chunk, _ in vectors.search(vector, K + VECTOR_EXTRA)]
                ranks[cut].append(rank_of_gold(workspace, hits, case))
        print(json.dumps({"dist": dist, "cases": len(cases), "chunks": len(vectors)}), flush=True)
    summary: dict[str, Any] = {"cases": len(ranks[CUTS[0]]), "k": K}
    for cut in CUTS:
        found = ranks[cut]
        ordered = sorted(latency[cut])
        summary[str(cut)] = {
            "recall_at_5": round(sum(r is not None for r in found) / len(found), 3),
            "mrr": round(sum(1 / r for r in found if r is not None) / len(found), 3),
            "embed_p50_ms": round(statistics.median(ordered), 2),
            "embed_p90_ms": round(ordered[int(0.9 * len(ordered))], 2),
        }
        print(json.dumps({"tokens": cut, **summary[str(cut)]}), flush=True)
    print(
        "vector query length: "
        + "; ".join(
            f"{cut} tokens recall@5 {summary[str(cut)]['recall_at_5']} "
            f"(MRR {summary[str(cut)]['mrr']}), embed p50 {summary[str(cut)]['embed_p50_ms']} ms"
            for cut in CUTS
        )
    )
    print(json.dumps({"bench": "vector_query_length", **summary}))


if __name__ == "__main__":
    main()
