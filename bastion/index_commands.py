"""`bastion index`, `bastion search` and `bastion context`: argument parsing only; see `index`."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

DEFAULT_K = 5


def add_index_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `index`, `search` and `context` on the `bastion` command's subparsers."""
    build = sub.add_parser("index", help="build or refresh the workspace index")
    build.add_argument("roots", nargs="+", type=Path, metavar="ROOT", help="workspace root(s)")
    build.add_argument("--json", action="store_true", help="print the summary as JSON")
    build.add_argument(
        "--embed",
        action="store_true",
        help="also embed the chunks for semantic search (about a minute per thousand chunks on a "
        "laptop CPU; the language server does this in the background by itself)",
    )
    build.set_defaults(func=run_index)

    search = sub.add_parser("search", help="search the workspace index")
    search.add_argument("query")
    search.add_argument("--k", type=int, default=10, help="how many results (default 10)")
    search.set_defaults(func=run_search)

    context = sub.add_parser(
        "context", help="show the snippets a completion at FILE:LINE:COL would send"
    )
    context.add_argument(
        "position", nargs="?", metavar="FILE:LINE:COL", help="0-based line and column"
    )
    context.add_argument(
        "--batch", type=Path, metavar="CASES.jsonl", help='one {"file","line","col"} per line'
    )
    context.add_argument("--k", type=int, default=DEFAULT_K, help="how many snippets (default 5)")
    context.set_defaults(func=run_context)

    for parser in (search, context):
        parser.add_argument(
            "--workspace",
            type=Path,
            action="append",
            required=True,
            metavar="ROOT",
            help="workspace root (repeat for a multi-root workspace)",
        )
        parser.add_argument("--json", action="store_true", help="print JSON")


def _bar(label: str, done: int, total: int) -> None:
    width = 30
    filled = width * done // max(total, 1)
    bar = "#" * filled + "-" * (width - filled)
    print(f"\r{label} [{bar}] {done}/{total}", end="", file=sys.stderr, flush=True)
    if done == total:
        print(file=sys.stderr)


def _progress(done: int, total: int, path: str) -> None:
    if done == total or done % 50 == 0:
        _bar("indexing", done, total)


def _embedding_progress(done: int, total: int) -> None:
    _bar("embedding", done, total)


def _saved_vectors(workspace: Any) -> Any:
    """The workspace's vectors when `bastion index --embed` or the language server made them."""
    from index.semantic import SemanticIndex
    from index.vectors import SIDECAR_FILE

    semantic = SemanticIndex(workspace.cache_dir)
    if not (semantic.directory / SIDECAR_FILE).is_file():
        return None
    semantic.load()
    for warning in semantic.warnings:
        print(f"bastion: warning: {warning}", file=sys.stderr)
    return semantic


def _open(roots: list[Path], show_progress: bool = False) -> Any:
    from index.workspace import WorkspaceIndex

    missing = [str(root) for root in roots if not root.is_dir()]
    if missing:
        raise SystemExit(f"bastion: not a directory: {', '.join(missing)}")
    workspace = WorkspaceIndex(roots)
    report = workspace.refresh(_progress if show_progress and sys.stderr.isatty() else None)
    for warning in report.warnings:
        print(f"bastion: warning: {warning}", file=sys.stderr)
    return workspace, report


def _embed(workspace: Any) -> Any:
    from index.semantic import SemanticIndex

    semantic = SemanticIndex(workspace.cache_dir)
    tty = sys.stderr.isatty()
    report = semantic.sync(workspace, _embedding_progress if tty else None)
    for warning in report.warnings:
        print(f"bastion: warning: {warning}", file=sys.stderr)
    backend = semantic.encoder.backend
    semantic.close()
    return report, backend


def run_index(args: argparse.Namespace) -> int:
    """`bastion index ROOT...`."""
    workspace, report = _open(args.roots, show_progress=True)
    embedded = _embed(workspace) if args.embed else None
    if args.json:
        print(
            json.dumps(
                {
                    "files": report.files,
                    "chunks": report.chunks,
                    "symbols": report.symbols,
                    "indexed": report.indexed,
                    "unchanged": report.unchanged,
                    "removed": report.removed,
                    "seconds": round(report.seconds, 3),
                    "skipped": report.skipped,
                    **(
                        {"embedded": embedded[0].embedded, "embedding_backend": embedded[1]}
                        if embedded
                        else {}
                    ),
                }
            )
        )
        return 0
    print(
        f"indexed {report.files} files, {report.chunks} chunks, {report.symbols} definitions "
        f"in {report.seconds:.2f}s ({report.indexed} re-indexed, {report.unchanged} unchanged, "
        f"{report.removed} removed)"
    )
    if embedded is not None:
        sync, backend = embedded
        print(
            f"embedded {sync.embedded} chunks ({sync.removed} dropped) in {sync.seconds:.1f}s "
            f"with {backend}"
        )
    if report.skipped:
        reasons = Counter(reason for reason in report.skipped.values())
        print(f"skipped {len(report.skipped)} files:")
        for reason, count in sorted(reasons.items(), key=lambda item: -item[1]):
            print(f"  {count:5d}  {reason}")
        for path, reason in list(report.skipped.items())[:50]:
            print(f"    {path}: {reason}")
        if len(report.skipped) > 50:
            print(f"    ... and {len(report.skipped) - 50} more")
    return 0


def _print_snippets(snippets: list[Any]) -> None:
    for rank, snippet in enumerate(snippets, 1):
        print(
            f"#{rank} {snippet.path}:{snippet.start_line}-{snippet.end_line} "
            f"{snippet.kind} {snippet.name} ({'+'.join(snippet.sources)}, {snippet.score:.4f})"
        )
        for line in snippet.text.splitlines():
            print(f"    {line}")


def run_search(args: argparse.Namespace) -> int:
    """`bastion search QUERY --workspace ROOT`."""
    from index.ranking import search

    workspace, _ = _open(args.workspace)
    snippets = search(workspace, args.query, args.k, vectors=_saved_vectors(workspace))
    if args.json:
        print(json.dumps({"query": args.query, "results": [s.as_json() for s in snippets]}))
    else:
        _print_snippets(snippets)
    return 0


def _context_one(
    workspace: Any, vectors: Any, file: str, line: int, col: int, k: int
) -> dict[str, Any]:
    from index.ranking import context

    path = Path(file)
    if not path.is_absolute():
        # Relative to the workspace (the eval's contract) first, then to the current directory.
        inside = [root / file for root in workspace.roots if (root / file).is_file()]
        path = inside[0] if inside else path.resolve()
    key = workspace.key_for(path) or file
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise SystemExit(f"bastion context: cannot read {file}: {exc.strerror}") from exc
    snippets = context(workspace, key, text, line, col, k, vectors=vectors)
    return {"file": file, "line": line, "col": col, "snippets": [s.as_json() for s in snippets]}


def run_context(args: argparse.Namespace) -> int:
    """`bastion context FILE:LINE:COL --workspace ROOT`, or `--batch CASES.jsonl`."""
    if (args.position is None) == (args.batch is None):
        print("bastion context: give FILE:LINE:COL or --batch CASES.jsonl", file=sys.stderr)
        return 2
    workspace, _ = _open(args.workspace)
    vectors = _saved_vectors(workspace)
    if args.batch is not None:
        for raw in args.batch.read_text(encoding="utf-8").splitlines():
            if not raw.strip():
                continue
            case = json.loads(raw)
            answer = _context_one(
                workspace, vectors, case["file"], case["line"], case["col"], args.k
            )
            print(json.dumps(answer), flush=True)
        return 0
    try:
        file, line, col = args.position.rsplit(":", 2)
        position = (int(line), int(col))
    except ValueError:
        print(f"bastion context: expected FILE:LINE:COL, got {args.position}", file=sys.stderr)
        return 2
    answer = _context_one(workspace, vectors, file, position[0], position[1], args.k)
    if args.json:
        print(json.dumps(answer))
    else:
        print(f"context for {file}:{position[0]}:{position[1]} (0-based)")
        from index.ranking import Snippet

        _print_snippets([Snippet(**s) for s in answer["snippets"]])
    return 0
