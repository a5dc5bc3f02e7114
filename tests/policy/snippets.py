"""Ordinary code from real open-source files: the installed sources of a few libraries."""

from __future__ import annotations

import sysconfig
from pathlib import Path

PACKAGES = ("httpx", "pydantic", "aiohttp", "pygls", "uvicorn", "h11", "click", "jinja2")
LINES_PER_SNIPPET = 30


def site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def snippets(count: int = 400) -> list[tuple[str, str]]:
    """`count` (name, code) snippets of 30 lines, spread evenly over the packages' files."""
    chunks: list[tuple[str, str]] = []
    root = site_packages()
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
            for start in range(0, len(lines), LINES_PER_SNIPPET):
                code = "\n".join(lines[start : start + LINES_PER_SNIPPET])
                if code.strip():
                    name = f"{path.relative_to(root)}:{start + 1}"
                    chunks.append((name, code))
    step = max(1, len(chunks) // count)
    return chunks[::step][:count]
