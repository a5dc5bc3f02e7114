"""The real `bastion` CLI in its own process, importing this checkout, for the audit tests."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.proxy.conftest import REPO


def bastion(
    *args: str, stdin: str | None = None, password: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `bastion ARGS`; a PostgreSQL store's `password` goes in through the environment."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if password is not None:
        env["BASTION_STORE_PASSWORD"] = password
    return subprocess.run(
        [sys.executable, "-m", "bastion.cli", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
