"""The first real keystroke: editor → `bastion lsp` → `bastion proxy` → a real model."""

from __future__ import annotations

import asyncio
import getpass
import time
from collections.abc import Callable
from pathlib import Path

from lsprotocol import types
from pygls.exceptions import JsonRpcRequestCancelled

from .conftest import LspSession, file_uri
from .stacks import Stack

SOURCE = '''def fibonacci(n: int) -> int:
    """Return the n-th Fibonacci number."""
    if n < 2:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)


def factorial(n: int) -> int:
    """Return n factorial."""
    '''
CURSOR = (9, 4)


async def wait_until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def position_after(start: types.Position, typed: str) -> types.Position:
    lines = typed.split("\n")
    if len(lines) == 1:
        return types.Position(line=start.line, character=start.character + len(typed))
    return types.Position(line=start.line + len(lines) - 1, character=len(lines[-1]))


async def test_inline_completion_comes_from_the_model_through_the_proxy(
    lsp: LspSession, stack: Stack, tmp_path: Path
) -> None:
    await lsp.start(lsp.settings(stack))
    uri = file_uri(tmp_path, "maths.py")
    lsp.open(uri, SOURCE)

    result = await lsp.inline(uri, *CURSOR)

    assert result is not None and result.items, "the model gave no completion"
    assert result.items[0].insert_text.strip()
    assert stack.completion_records(), "the proxy recorded no completion request"
    # The server stops reading once it has its line; the proxy records that outcome when it sees
    # the stream closed, which can be just after the editor has its answer.
    await wait_until(lambda: stack.completion_records()[-1]["outcome_of"] is not None)
    last = stack.completion_records()[-1]
    assert last["user"].startswith(getpass.getuser())
    assert last["feature"] == "completion"
    assert last["status"] == 200
    assert last["bytes_out"] > 0
    assert lsp.statuses and lsp.statuses[-1]["connected"] is True
    assert lsp.statuses[-1]["model"]


async def test_newer_request_supersedes_older_ones_and_closes_their_streams(
    lsp: LspSession, stack: Stack, tmp_path: Path
) -> None:
    await lsp.start(lsp.settings(stack, maxTokens=1024))
    uri = file_uri(tmp_path, "supersede.py")
    lsp.open(uri, SOURCE)
    before = len(stack.completion_records())

    requests = []
    for i in range(3):
        request = lsp.client.text_document_inline_completion_async(lsp.inline_params(uri, *CURSOR))
        requests.append(asyncio.ensure_future(request))
        await wait_until(lambda i=i: len(stack.completion_records()) >= before + i + 1)
    results = await asyncio.gather(*requests, return_exceptions=True)

    assert all(isinstance(r, JsonRpcRequestCancelled) for r in results[:2]), results
    last = results[2]
    assert isinstance(last, types.InlineCompletionList) and last.items
    await wait_until(lambda: all(r["outcome_of"] for r in stack.completion_records()[before:]))
    first, second = stack.completion_records()[before : before + 2]
    for record in (first, second):
        assert record["aborted_by"] == "client", dict(record)
        assert not record["completed"], dict(record)


async def test_typing_through_a_suggestion_is_answered_without_the_model(
    lsp: LspSession, stack: Stack, tmp_path: Path
) -> None:
    await lsp.start(lsp.settings(stack))
    uri = file_uri(tmp_path, "typing.py")
    lsp.open(uri, SOURCE)
    shown = await lsp.inline(uri, *CURSOR)
    assert shown is not None and shown.items
    suggestion = str(shown.items[0].insert_text)
    typed = suggestion[: max(1, min(2, len(suggestion) - 1))]
    requests_before = stack.request_count()

    cursor = types.Position(line=CURSOR[0], character=CURSOR[1])
    lsp.type_text(uri, cursor, typed)
    after = position_after(cursor, typed)
    rest = await lsp.inline(uri, after.line, after.character)

    assert rest is not None and rest.items
    assert rest.items[0].insert_text == suggestion[len(typed) :]
    assert stack.request_count() == requests_before, "typing-through must not call the model"


async def test_invalid_settings_are_named_and_defaults_used(
    lsp: LspSession, stack: Stack, tmp_path: Path
) -> None:
    await lsp.start(lsp.settings(stack, maxTokens="lots", temperatur=0.5))
    await wait_until(lambda: len(lsp.client.messages) >= 2, timeout_s=5)
    text = " | ".join(m.message for m in lsp.client.messages)
    assert "'maxTokens'" in text and "'temperatur'" in text
    assert "unknown setting" in text

    uri = file_uri(tmp_path, "settings.py")
    lsp.open(uri, SOURCE)
    result = await lsp.inline(uri, *CURSOR)
    assert result is not None and result.items, "valid keys must still be in force"


async def test_positions_outside_the_document_give_no_completion(
    lsp: LspSession, stack: Stack, tmp_path: Path
) -> None:
    await lsp.start(lsp.settings(stack))
    uri = file_uri(tmp_path, "short.py")
    lsp.open(uri, "x = 1\n")
    requests_before = stack.request_count()

    assert await lsp.inline(uri, 50, 0) is None
    assert await lsp.inline(uri, 0, 40) is None
    assert stack.request_count() == requests_before


async def test_binary_and_huge_documents_give_no_completion_and_a_log_line(
    lsp: LspSession, stack: Stack, tmp_path: Path
) -> None:
    await lsp.start(lsp.settings(stack))
    binary, huge = file_uri(tmp_path, "blob.bin"), file_uri(tmp_path, "huge.py")
    lsp.open(binary, "ELF\x00\x01\x02 header", language_id="plaintext")
    lsp.open(huge, "x = 1\n" * (10 * 1024 * 1024 // 6))
    requests_before = stack.request_count()

    assert await lsp.inline(binary, 0, 3) is None
    assert await lsp.inline(huge, 1, 0) is None

    logs = " | ".join(m.message for m in lsp.client.log_messages)
    assert "binary content" in logs
    assert "over maxDocumentBytes" in logs
    assert stack.request_count() == requests_before


async def test_proxy_down_is_reported_and_requests_end_within_the_timeout(
    lsp: LspSession, tmp_path: Path
) -> None:
    from bastion.stack import free_port

    closed = f"http://127.0.0.1:{free_port()}"
    await lsp.start({"proxyUrl": closed, "apiKey": "bst_x", "requestTimeoutS": 2})
    uri = file_uri(tmp_path, "down.py")
    lsp.open(uri, SOURCE)

    started = time.monotonic()
    result = await lsp.inline(uri, *CURSOR)

    assert result is None
    assert time.monotonic() - started < 3.0
    await wait_until(lambda: any(s.get("lastError") for s in lsp.statuses), timeout_s=2)
    status = lsp.statuses[-1]
    assert status["connected"] is False
    assert "127.0.0.1" in status["lastError"] or "refused" in status["lastError"].lower()


async def test_cancel_request_closes_the_stream_to_the_proxy(
    lsp: LspSession, stack: Stack, tmp_path: Path
) -> None:
    await lsp.start(lsp.settings(stack, maxTokens=1024))
    uri = file_uri(tmp_path, "cancel.py")
    lsp.open(uri, SOURCE)
    before = len(stack.completion_records())

    pending = asyncio.ensure_future(
        lsp.client.protocol.send_request_async(
            types.TEXT_DOCUMENT_INLINE_COMPLETION,
            lsp.inline_params(uri, *CURSOR),
            msg_id="cancel-me",
        )
    )
    await wait_until(lambda: len(stack.completion_records()) > before)
    lsp.client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="cancel-me"))

    try:
        result = await pending
    except JsonRpcRequestCancelled:
        result = None
    assert result is None
    await wait_until(lambda: stack.completion_records()[before]["outcome_of"] is not None)
    record = stack.completion_records()[before]
    assert record["aborted_by"] == "client", dict(record)
    assert not record["completed"]


async def test_clients_without_inline_completion_get_a_completion_item(
    lsp: LspSession, stack: Stack, tmp_path: Path
) -> None:
    await lsp.start(lsp.settings(stack))
    uri = file_uri(tmp_path, "fallback.py")
    lsp.open(uri, SOURCE)

    result = await lsp.client.text_document_completion_async(
        types.CompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=types.Position(line=CURSOR[0], character=CURSOR[1]),
        )
    )

    assert isinstance(result, types.CompletionList) and len(result.items) == 1
    item = result.items[0]
    assert isinstance(item.text_edit, types.TextEdit) and item.text_edit.new_text.strip()
    assert item.label and item.detail == "Bastion"
    assert stack.completion_records()[-1]["feature"] == "completion"
