"""The project's own scripts (`scripts/`), run from tests: how they install and start the real
servers that tests need (PostgreSQL, rsyslog)."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def run_script(
    name: str, *args: str, env: Mapping[str, str] | None = None, timeout_s: float = 300
) -> str:
    """`bash scripts/NAME ARGS`: what it printed, stripped; RuntimeError with what it said on
    stderr when it fails."""
    done = subprocess.run(
        ["bash", str(SCRIPTS / name), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"scripts/{name} {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout.strip()
