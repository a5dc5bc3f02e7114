"""Seconds until symbol and lexical search answer on a 10k-file tree of real sources (goal <= 5 s).

Measures (a) a cold build (nothing cached) and (b) a restart with the index on disk: load, check
every file's stat, build the in-memory views, answer one symbol and one lexical query. Each phase
runs in a fresh process so nothing is shared. Prints one JSON line per phase and the summary last.
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

PHASE = """
import json, sys, time
began = time.perf_counter()
from pathlib import Path
from index.ranking import search
from index.workspace import WorkspaceIndex
workspace = WorkspaceIndex([Path(sys.argv[1])])
report = workspace.refresh()
refreshed = time.perf_counter()
hits = workspace.definitions("main")
found = search(workspace, "parse_header", 5)
answered = time.perf_counter()
print(json.dumps({"files": report.files, "chunks": report.chunks, "indexed": report.indexed,
                  "refresh_s": round(refreshed - began, 3), "answer_s": round(answered - began, 3),
                  "symbol_hits": len(hits), "lexical_hits": len(found)}))
"""


def phase(root: Path, env: dict[str, str]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", PHASE, str(root)],
        env=env,
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
        env = {**os.environ, "BASTION_INDEX_CACHE": str(Path(tmp) / "cache")}
        cold = phase(root, env)
        print(json.dumps({"phase": "cold", **cold}))
        warm = phase(root, env)
        print(json.dumps({"phase": "restart", **warm}))
        print(
            json.dumps(
                {
                    "files": warm["files"],
                    "chunks": warm["chunks"],
                    "cold_answer_s": cold["answer_s"],
                    "restart_answer_s": warm["answer_s"],
                    "goal_s": 5.0,
                }
            )
        )


if __name__ == "__main__":
    main()
