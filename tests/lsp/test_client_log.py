"""The server's log reaches the editor as window/logMessage at each record's level, not stderr."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from pathlib import Path

import pytest
from lsprotocol import types

from lsp_server.client_log import ClientLogHandler
from tests.e2e.test_inline_completion import wait_until
from tests.lsp.real_server import start_on_workspace


def _record(name: str, level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


async def test_records_from_any_thread_are_sent_on_the_loop_at_their_level() -> None:
    sent: list[tuple[types.LogMessageParams, int]] = []
    handler = ClientLogHandler(lambda params: sent.append((params, threading.get_ident())))
    handler.attach(asyncio.get_running_loop())
    handler.handle(_record("lsp_server.server", logging.INFO, "workspace index: 2 files"))
    worker = threading.Thread(
        target=handler.handle, args=(_record("index.semantic", logging.WARNING, "vectors rebuilt"),)
    )
    worker.start()
    worker.join()
    handler.handle(_record("httpx", logging.ERROR, "connection reset"))
    await asyncio.sleep(0.05)
    assert [(p.type, p.message) for p, _ in sent] == [
        (types.MessageType.Info, "workspace index: 2 files"),
        (types.MessageType.Error, "httpx: connection reset"),
        (types.MessageType.Warning, "vectors rebuilt"),
    ]
    assert {thread for _, thread in sent} == {threading.get_ident()}


async def test_a_traceback_is_part_of_the_message() -> None:
    sent: list[types.LogMessageParams] = []
    handler = ClientLogHandler(sent.append)
    handler.attach(asyncio.get_running_loop())
    try:
        raise ValueError("bad chunk")
    except ValueError:
        record = logging.LogRecord(
            "lsp_server.x", logging.ERROR, __file__, 1, "embedding failed", None, sys.exc_info()
        )
    handler.handle(record)
    assert sent[0].message.startswith("embedding failed\nTraceback")
    assert "ValueError: bad chunk" in sent[0].message


def test_before_the_client_is_attached_records_go_to_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    sent: list[types.LogMessageParams] = []
    handler = ClientLogHandler(sent.append)
    handler.handle(_record("lsp_server.server", logging.WARNING, "settings: unknown key"))
    assert sent == []
    assert "lsp_server.server settings: unknown key" in capsys.readouterr().err


async def test_once_detached_records_go_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    sent: list[types.LogMessageParams] = []
    handler = ClientLogHandler(sent.append)
    handler.attach(asyncio.get_running_loop())
    handler.detach()
    handler.handle(_record("lsp_server.server", logging.INFO, "workspace index: build stopped"))
    assert sent == []
    assert "workspace index: build stopped" in capsys.readouterr().err


async def test_what_sending_logs_goes_to_stderr_instead_of_recursing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    calls = 0

    def send(params: types.LogMessageParams) -> None:
        nonlocal calls
        calls += 1
        handler.handle(_record("pygls.protocol", logging.WARNING, "writer closed"))
        raise BrokenPipeError("the client is gone")

    handler = ClientLogHandler(send)
    handler.attach(asyncio.get_running_loop())
    handler.handle(_record("lsp_server.server", logging.INFO, "workspace index: 2 files"))
    err = capsys.readouterr().err
    assert calls == 1
    assert "pygls.protocol writer closed" in err and "workspace index: 2 files" in err


async def test_the_server_logs_to_the_client_once_and_not_to_stderr(tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "geometry.py").write_text("def area(r):\n    return 3.14 * r * r\n")
    options = {"proxyUrl": "http://127.0.0.1:9", "apiKey": "k", "embeddingsEnabled": False}
    env = {"BASTION_INDEX_CACHE": str(tmp_path / "index")}
    client = await start_on_workspace(workspace, env, options)

    def indexed() -> list[types.LogMessageParams]:
        return [m for m in client.log_messages if m.message.startswith("workspace index:")]

    await wait_until(lambda: bool(indexed()), 60)
    await client.shutdown_session()
    await client.stop()
    assert client._server is not None and client._server.stderr is not None
    stderr = (await client._server.stderr.read()).decode()
    assert [m.type for m in indexed()] == [types.MessageType.Info]
    assert "workspace index:" not in stderr, stderr
