"""A large source tree built from real Python sources (this interpreter's installed packages)."""

from __future__ import annotations

import shutil
import sysconfig
from pathlib import Path


def real_sources() -> list[Path]:
    """Every .py file installed beside this interpreter, in a stable order."""
    site = Path(sysconfig.get_paths()["purelib"])
    return sorted(p for p in site.rglob("*.py") if p.is_file() and p.stat().st_size < 500_000)


def build_tree(dest: Path, files: int) -> Path:
    """`dest` with `files` real source files, copies in numbered subtrees when there are too few."""
    sources = real_sources()
    site = Path(sysconfig.get_paths()["purelib"])
    made = 0
    copy = 0
    while made < files:
        for source in sources:
            if made >= files:
                break
            target = dest / f"copy{copy}" / source.relative_to(site)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            made += 1
        copy += 1
    return dest
