"""The language server starts light: no encoder, torch or FAISS until indexing needs them."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pygls.lsp.client import LanguageClient

from lsp_server.lifecycle import EXIT_GRACE_S
from lsp_server.status import STATUS_METHOD
from lsp_server.workspace_index import STOP_WAIT_S
from tests.lsp.real_server import start_on_workspace

# Enough files that a cold build here takes far longer than the 5 s the test allows for exit.
BIG_WORKSPACE_FILES = 2500
# A server that builds the index and nothing else: no proxy answers, no embeddings.
INDEX_ONLY = {"proxyUrl": "http://127.0.0.1:9", "apiKey": "k", "embeddingsEnabled": False}
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


async def test_a_server_asked_to_stop_mid_index_build_exits_at_once(tmp_path: Path) -> None:
    """A cold build of a large workspace runs for many seconds in worker threads and processes.
    Stopped in the middle of it, the server exits at once and with success: the build stops
    between files and rolls back, and the tasks that end as the loop stops have no client left
    to notify (before, their status updates over the closed stdout spun the server forever)."""
    client = await _building_a_big_workspace(tmp_path, functions_per_file=60)
    assert client._server is not None
    asked = time.monotonic()
    await client.shutdown_session()
    await asyncio.wait_for(client.stop(), timeout=30)
    assert time.monotonic() - asked < 5
    assert client._server.returncode == 0
    logged = [m.message for m in client.log_messages if m.message.startswith("workspace index")]
    assert logged[-1] == "workspace index: build stopped; the next start builds it again", logged


async def test_a_server_whose_editor_vanishes_mid_index_build_exits_at_once(
    tmp_path: Path,
) -> None:
    """An editor that crashes sends no `shutdown`: the server reads the end of its input. The
    loop then cancels the build, and the build's thread stops too, rather than finishing the
    build for nobody before the process can end."""
    # Files ten times larger: the whole build here takes some 20 s, far above the 5 s allowed.
    client = await _building_a_big_workspace(tmp_path, functions_per_file=600)
    server = client._server
    assert server is not None and server.stdin is not None
    gone = time.monotonic()
    server.stdin.close()
    await asyncio.wait_for(server.wait(), timeout=120)
    assert time.monotonic() - gone < 5
    await client.stop()


async def test_a_server_whose_build_cannot_stop_still_exits_in_time(tmp_path: Path) -> None:
    """A build stuck in a system call (here `git`, which stalls: a network file system, say)
    cannot stop between files. The server still answers `shutdown`, sends nothing after `exit`,
    and ends within its grace period rather than waiting for the worker thread."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "geometry.py").write_text("def area(r):\n    return 3.14 * r * r\n")
    stalling = tmp_path / "bin"
    stalling.mkdir()
    # It stalls for as long as the server that ran it lives.
    (stalling / "git").write_text("#!/bin/sh\nwhile kill -0 $PPID; do sleep 0.1; done\n")
    (stalling / "git").chmod(0o755)
    env = {
        "BASTION_INDEX_CACHE": str(tmp_path / "index"),
        "PATH": f"{stalling}{os.pathsep}{os.environ['PATH']}",
    }
    client = await start_on_workspace(workspace, env, INDEX_ONLY)
    percents = await _indexing(client, lambda percents: 0 in percents)
    await asyncio.sleep(0.5)
    assert client._server is not None
    asked = time.monotonic()
    await client.shutdown_session()
    await asyncio.wait_for(client.stop(), timeout=60)
    took = time.monotonic() - asked
    assert STOP_WAIT_S + EXIT_GRACE_S - 1 < took < STOP_WAIT_S + EXIT_GRACE_S + 3
    assert client._server.returncode == 0
    assert percents[-1] == 0, "the stuck build was reported as ended"


async def _building_a_big_workspace(tmp_path: Path, functions_per_file: int) -> LanguageClient:
    """A server on a workspace of BIG_WORKSPACE_FILES files, once its full build is under way."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    body = "".join(f"def f{n}(x):\n    return x + {n}\n\n" for n in range(functions_per_file))
    for n in range(BIG_WORKSPACE_FILES):
        (workspace / f"module_{n}.py").write_text(body)
    env = {"BASTION_INDEX_CACHE": str(tmp_path / "index")}
    client = await start_on_workspace(workspace, env, INDEX_ONLY)
    await _indexing(client, lambda percents: any(p is not None and 0 < p < 100 for p in percents))
    return client


async def _indexing(
    client: LanguageClient, started: Callable[[list[int | None]], bool]
) -> list[int | None]:
    """The indexing percents the server reports, kept up to date, once they show `started`."""
    percents: list[int | None] = []
    client.feature(STATUS_METHOD)(lambda params: percents.append(params.indexingPercent))
    deadline = time.monotonic() + 60
    while not started(percents):
        assert time.monotonic() < deadline, "the index build did not start within 60 s"
        await asyncio.sleep(0.05)
    return percents


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
