"""The language server starts light: no encoder, torch or FAISS until indexing needs them."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

from tests.lsp.real_server import start_on_workspace

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


async def test_a_server_asked_to_stop_mid_export_exits_at_once(tmp_path: Path) -> None:
    """On a first start the server exports its embedding model in a child process (~15 s).
    The editor restarts the server when the user sets a key and kills one that has not
    stopped in 5 s; the export must neither hold up the stop nor outlive the server."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "geometry.py").write_text("def area(r):\n    return 3.14 * r * r\n")
    env = {
        "BASTION_CACHE": str(tmp_path / "models"),
        "BASTION_INDEX_CACHE": str(tmp_path / "index"),
    }
    options = {"proxyUrl": "http://127.0.0.1:9", "apiKey": "k"}
    client = await start_on_workspace(workspace, env, options)
    assert client._server is not None
    children = await asyncio.to_thread(_wait_for_children, client._server.pid)
    await asyncio.sleep(1)
    asked = time.monotonic()
    await client.shutdown_session()
    await client.stop()
    assert time.monotonic() - asked < 3
    assert not await asyncio.to_thread(_alive, children)
    assert not await asyncio.to_thread(_exported, tmp_path / "models")


def _children_of(parent: int) -> list[int]:
    """The processes `parent` spawned to run a job (the model export, here); not
    multiprocessing's resource tracker, which leaves when its parent does."""
    children = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
            command = (stat_file.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == parent and b"spawn_main" in command:
            children.append(int(stat_file.parent.name))
    return children


def _wait_for_children(parent: int) -> list[int]:
    deadline = time.monotonic() + 60
    while not (children := _children_of(parent)):
        assert time.monotonic() < deadline, f"no child of {parent} within 60 s"
        time.sleep(0.05)
    return children


def _alive(pids: list[int]) -> list[int]:
    """Those of `pids` still running (a zombie has ended)."""
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(pid)
    return alive


def _exported(cache: Path) -> list[Path]:
    return list(cache.glob("models/*/metadata.json"))
