"""Seconds until symbol and lexical search answer on a 10k-file tree of real sources (goal <= 5 s).

"Answers" means: an index over the complete tree has been committed and one definition lookup
(`definitions("main")`) and one fused lexical search (`search("parse_header")`) have returned
results; nothing is answered from a partial index. Phases, each in a fresh process:
(a) a cold build with one process (`workers=1`, the old way), (b) a cold build with the worker
pool (one worker per CPU), (c) what the language server does on a cold start: the quick first
stage (`index.quick`: every file, regex definitions, BM25 over identifiers) answers, then the full
index is built in the same process (its time is reported too), (d) a restart with the index on
disk (stat every file, no re-chunking).
Each phase reports wall seconds and CPU seconds (this process plus its workers): on a shared,
loaded machine the CPU figures are the steadier ones. Prints one JSON line per phase, a one-line
summary, and a JSON summary last; ratios compare (a) and (b) from the same run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from index_tree import build_tree

FILES = int(os.environ.get("BENCH_FILES", "10000"))

# The CPU seconds of a phase's process and its index workers.
CPU_SECONDS = """
cpu = sum(
    usage.ru_utime + usage.ru_stime
    for usage in (resource.getrusage(resource.RUSAGE_SELF),
                  resource.getrusage(resource.RUSAGE_CHILDREN))
)
"""

PHASE = """
import json, resource, sys, time
began = time.perf_counter()
from pathlib import Path
from index.ranking import search
from index.workspace import WorkspaceIndex
workers = int(sys.argv[2]) if sys.argv[2] != "auto" else None
workspace = WorkspaceIndex([Path(sys.argv[1])], cache_dir=Path(sys.argv[3]), workers=workers)
report = workspace.refresh()
refreshed = time.perf_counter()
hits = workspace.definitions("main")
found = search(workspace, "parse_header", 5)
answered = time.perf_counter()
#CPU
print(json.dumps({"files": report.files, "chunks": report.chunks, "indexed": report.indexed,
                  "workers": workspace.workers, "refresh_s": round(refreshed - began, 3),
                  "answer_s": round(answered - began, 3), "cpu_s": round(cpu, 2),
                  "symbol_hits": len(hits), "lexical_hits": len(found)}))
"""


QUICK_FIRST = """
import json, resource, sys, time
began = time.perf_counter()
from pathlib import Path
from index.quick import QuickIndex
from index.ranking import search
from index.workspace import WorkspaceIndex
workspace = WorkspaceIndex([Path(sys.argv[1])], cache_dir=Path(sys.argv[3]))
quick = QuickIndex.build(workspace.roots, workspace.cache_dir, workspace.workers)
hits = quick.definitions("main")
found = search(quick, "parse_header", 5)
answered = time.perf_counter()
report = workspace.refresh()
full = search(workspace, "parse_header", 5)
refreshed = time.perf_counter()
quick.discard()
#CPU
print(json.dumps({"files": report.files, "quick_files": quick.files, "chunks": report.chunks,
                  "workers": workspace.workers, "answer_s": round(answered - began, 3),
                  "quick_build_s": round(quick.seconds, 3),
                  "full_index_s": round(refreshed - began, 3), "cpu_s": round(cpu, 2),
                  "symbol_hits": len(hits), "lexical_hits": len(found),
                  "full_lexical_hits": len(full)}))
"""


def phase(root: Path, workers: str, cache: Path, script: str = PHASE) -> dict[str, float]:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            script.replace("#CPU\n", CPU_SECONDS),
            str(root),
            workers,
            str(cache),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bastion-bench-") as tmp:
        root = build_tree(Path(tmp) / "tree", FILES)
        serial = phase(root, "1", Path(tmp) / "serial")
        print(json.dumps({"phase": "cold_one_process", **serial}))
        cold = phase(root, "auto", Path(tmp) / "pool")
        print(json.dumps({"phase": "cold_worker_pool", **cold}))
        quick = phase(root, "auto", Path(tmp) / "quick", QUICK_FIRST)
        print(json.dumps({"phase": "cold_quick_first", **quick}))
        if not (quick["symbol_hits"] and quick["lexical_hits"]):
            sys.exit("the quick index did not answer both queries")
        warm = phase(root, "auto", Path(tmp) / "pool")
        print(json.dumps({"phase": "restart", **warm}))
        speedup = serial["answer_s"] / cold["answer_s"]
        print(
            f"{warm['files']} files, {warm['chunks']} chunks: cold "
            f"{serial['answer_s']:.1f} s in one process -> {cold['answer_s']:.1f} s "
            f"with {cold['workers']} workers ({speedup:.2f}x; "
            f"CPU {serial['cpu_s']:.1f} -> {cold['cpu_s']:.1f} s); quick first stage answers in "
            f"{quick['answer_s']:.1f} s (full index {quick['full_index_s']:.1f} s);"
            f" restart {warm['answer_s']:.2f} s"
        )
        print(
            json.dumps(
                {
                    "files": warm["files"],
                    "chunks": warm["chunks"],
                    "workers": cold["workers"],
                    "cold_one_process_answer_s": serial["answer_s"],
                    "cold_answer_s": cold["answer_s"],
                    "cold_quick_first_answer_s": quick["answer_s"],
                    "cold_quick_first_full_index_s": quick["full_index_s"],
                    "cold_quick_first_cpu_s": quick["cpu_s"],
                    "cold_speedup": round(speedup, 2),
                    "cold_one_process_cpu_s": serial["cpu_s"],
                    "cold_cpu_s": cold["cpu_s"],
                    "restart_answer_s": warm["answer_s"],
                    "goal_s": 5.0,
                }
            )
        )


if __name__ == "__main__":
    main()
