"""The language server starts light: no encoder, torch or FAISS until indexing needs them."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "onnxruntime", "faiss", "sentence_transformers", "transformers")


def test_importing_the_server_loads_no_heavy_module() -> None:
    probe = (
        "import json, sys, lsp_server.server\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(run.stdout) == []
