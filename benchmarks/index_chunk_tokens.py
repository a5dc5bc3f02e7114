"""How many chunks exceed the bundled encoder's 256 word-pieces, and what fitting them costs.

On BENCH_FILES real sources (see index_tree.py) chunks each file three ways, side by side: the
default limits (lines and characters only), with the cheap regex `EstimatedCounter`, and with the
exact MiniLM `WordPieceCounter`. Every chunk is then counted with the exact tokenizer. Prints one
JSON line per way, a one-line summary, and a JSON summary last.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from index_tree import build_tree

from index.chunker import ChunkLimits, chunk_file
from index.token_budget import EstimatedCounter, WordPieceCounter

FILES = int(os.environ.get("BENCH_FILES", "2000"))
LIMIT = 256


def main() -> None:
    exact = WordPieceCounter.for_minilm()
    ways = {
        "default": ChunkLimits(),
        "estimated": ChunkLimits(token_counter=EstimatedCounter()),
        "exact": ChunkLimits(token_counter=exact),
    }
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bastion-bench-") as tmp:
        root = build_tree(Path(tmp) / "tree", FILES)
        sources = [
            (str(p.relative_to(root)), p.read_text(encoding="utf-8", errors="replace"))
            for p in sorted(root.rglob("*.py"))
        ]
        for name, limits in ways.items():
            began = time.process_time()
            texts = [
                chunk.text
                for path, text in sources
                for chunk in chunk_file(path, text, limits).chunks
            ]
            seconds = time.process_time() - began
            counts = [sum(exact(t.splitlines())) + exact.special_tokens for t in texts]
            over = sum(count > LIMIT for count in counts)
            results[name] = {
                "chunks": len(texts),
                "chunk_cpu_s": round(seconds, 2),
                "over_limit": over,
                "over_fraction": round(over / max(len(texts), 1), 4),
                "max_tokens": max(counts, default=0),
            }
            print(json.dumps({"way": name, **results[name]}))
    base = results["default"]["chunk_cpu_s"] or 1.0
    print(
        f"{results['default']['over_fraction']:.1%} of chunks over {LIMIT} word-pieces by default; "
        f"estimated: {results['estimated']['over_fraction']:.2%} "
        f"({results['estimated']['chunk_cpu_s'] / base:.2f}x chunking CPU); "
        f"exact: {results['exact']['over_fraction']:.2%} "
        f"({results['exact']['chunk_cpu_s'] / base:.2f}x chunking CPU)"
    )
    print(json.dumps({"files": len(sources), "limit": LIMIT, **results}))


if __name__ == "__main__":
    main()
