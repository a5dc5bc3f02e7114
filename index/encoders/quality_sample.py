"""A fixed sample of real code chunks, to measure how far a quantised model drifts.

The chunks come from the Python standard library beside the running interpreter, cut by the
index's own chunker, so the sample is real code, the same on every machine with the same Python,
and needs no data file.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

from ..chunker import chunk_file

_SOURCES = (
    "json/decoder.py",
    "csv.py",
    "textwrap.py",
    "shlex.py",
    "fnmatch.py",
    "base64.py",
    "heapq.py",
    "glob.py",
    "tempfile.py",
    "http/cookies.py",
    "email/utils.py",
    "logging/handlers.py",
)


def code_sample(limit: int = 48) -> list[str]:
    """Up to `limit` chunks, taken in turn from each source file so that all of them count."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    per_file: list[list[str]] = []
    for relative in _SOURCES:
        path = stdlib / relative
        if path.is_file():
            chunked = chunk_file(str(path), path.read_text(encoding="utf-8", errors="replace"))
            per_file.append([c.text for c in chunked.chunks if c.text.strip()])
    sample: list[str] = []
    depth = 0
    while len(sample) < limit and any(depth < len(chunks) for chunks in per_file):
        sample.extend(chunks[depth] for chunks in per_file if depth < len(chunks))
        depth += 1
    if not sample:
        raise RuntimeError(f"no standard-library sources found under {stdlib} to sample")
    return sample[:limit]
