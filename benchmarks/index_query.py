"""Query-side costs of the workspace index on a tree of real sources (no encoder involved).

(c) incremental update of one edited file, goal <= 50 ms; (d) completion-path retrieval (symbol +
lexical + fusion) at >= 100k chunks, p50/p99, goal p50 <= 5 ms (no query embedding: this index has
no vector part yet); (e) the process's peak RSS with the index open, goal <= 800 MB.
Prints one JSON line per measurement and the summary last.
"""

from __future__ import annotations

import json
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from index_tree import build_tree

from index.ranking import context
from index.workspace import WorkspaceIndex

FILES = int(os.environ.get("BENCH_FILES", "6500"))
QUERIES = int(os.environ.get("BENCH_QUERIES", "300"))


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _cursors(workspace: WorkspaceIndex, count: int) -> list[tuple[str, str, int, int]]:
    """Positions just after a call's "(" in random indexed files, like the retrieval eval."""
    rng = random.Random(7)
    paths = sorted(p for p in workspace.paths() if p.endswith(".py"))
    out: list[tuple[str, str, int, int]] = []
    while len(out) < count:
        key = rng.choice(paths)
        disk = workspace.file_path(key)
        assert disk is not None
        lines = disk.read_text(encoding="utf-8").splitlines()
        calls = [(n, line.index("(") + 1) for n, line in enumerate(lines) if "(" in line]
        if calls:
            line, col = rng.choice(calls)
            out.append((key, "\n".join(lines), line, col))
    return out


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bastion-bench-") as tmp:
        os.environ["BASTION_INDEX_CACHE"] = str(Path(tmp) / "cache")
        root = build_tree(Path(tmp) / "tree", FILES)
        workspace = WorkspaceIndex([root])
        report = workspace.refresh()
        print(
            json.dumps({"files": report.files, "chunks": report.chunks, "build_s": report.seconds})
        )

        edited = root / sorted(p for p in workspace.paths() if p.endswith(".py"))[100]
        original = edited.read_text(encoding="utf-8")
        updates: list[float] = []
        for n in range(20):
            began = time.perf_counter()
            workspace.update_file(edited, original + f"\n\ndef edited_{n}():\n    return {n}\n")
            updates.append((time.perf_counter() - began) * 1000)
        assert workspace.definitions("edited_19")
        update_ms = statistics.median(updates)
        print(json.dumps({"measure": "incremental_update_ms", "p50": round(update_ms, 2)}))

        cursors = _cursors(workspace, QUERIES)
        for key, text, line, col in cursors[:20]:
            context(workspace, key, text, line, col, 5)
        times: list[float] = []
        for key, text, line, col in cursors:
            began = time.perf_counter()
            context(workspace, key, text, line, col, 5)
            times.append((time.perf_counter() - began) * 1000)
        p50, p99 = _percentile(times, 0.5), _percentile(times, 0.99)
        print(json.dumps({"measure": "retrieval_ms", "p50": round(p50, 2), "p99": round(p99, 2)}))
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            json.dumps(
                {
                    "chunks": report.chunks,
                    "update_ms_p50": round(update_ms, 2),
                    "retrieval_ms_p50": round(p50, 2),
                    "retrieval_ms_p99": round(p99, 2),
                    "peak_rss_mb": round(rss_mb, 1),
                    "goals": {"update_ms": 50, "retrieval_ms_p50": 5, "rss_mb": 800},
                }
            )
        )


if __name__ == "__main__":
    main()
