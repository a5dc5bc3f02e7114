"""Code actions, quick fixes and chat over standard LSP, through the proxy, with a real model."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcRequestCancelled

from lsp_server.edits import apply_edits

from .conftest import LspSession
from .stacks import Stack
from .test_inline_completion import wait_until

GEOMETRY = '''def circle_area(radius: float) -> float:
    """Area of a circle."""
    return math.pi * radius * radius


def square_area(side: float) -> float:
    return side * side
'''
HELPER = '''def unmistakable_helper_name(value: int) -> int:
    """Doubles a value; chat must see this file when it is mentioned."""
    return value * 2
'''


def ruff_diagnostics(path: Path) -> list[types.Diagnostic]:
    """What a real linter reports for `path`, as the editor would pass it in."""
    run = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--select", "F821", "--output-format", "json",
         "--no-cache", str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return [
        types.Diagnostic(
            range=types.Range(
                start=types.Position(
                    line=d["location"]["row"] - 1, character=d["location"]["column"] - 1
                ),
                end=types.Position(
                    line=d["end_location"]["row"] - 1, character=d["end_location"]["column"] - 1
                ),
            ),
            message=d["message"],
            source="ruff",
            code=d["code"],
        )
        for d in json.loads(run.stdout)
    ]


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    (tmp_path / "geometry.py").write_text(GEOMETRY)
    (tmp_path / "helper.py").write_text(HELPER)
    (tmp_path / "tests").mkdir()
    return tmp_path


async def open_geometry(lsp: LspSession, stack: Stack, workspace: Path) -> str:
    # Embeddings off: whether vector hits join the chat context would depend on how far the
    # background embedding got, so the prompt (and a greedy answer's length) would vary.
    await lsp.start(lsp.settings(stack, embeddingsEnabled=False), workspace=workspace)
    uri = (workspace / "geometry.py").as_uri()
    lsp.open(uri, GEOMETRY)
    return uri


def code_action_params(
    uri: str, line: int, diagnostics: list[types.Diagnostic]
) -> types.CodeActionParams:
    at = types.Position(line=line, character=4)
    return types.CodeActionParams(
        text_document=types.TextDocumentIdentifier(uri=uri),
        range=types.Range(start=at, end=at),
        context=types.CodeActionContext(diagnostics=diagnostics),
    )


async def chat(lsp: LspSession, **params: Any) -> Any:
    return await lsp.client.protocol.send_request_async("bastion/chat", params)


async def test_quick_fix_for_a_linter_diagnostic_resolves_to_an_applicable_edit(
    lsp: LspSession, stack: Stack, workspace: Path
) -> None:
    uri = await open_geometry(lsp, stack, workspace)
    diagnostics = ruff_diagnostics(workspace / "geometry.py")
    assert diagnostics and "math" in diagnostics[0].message

    actions = await lsp.client.text_document_code_action_async(
        code_action_params(uri, 2, diagnostics)
    )
    assert actions is not None
    fix = next(a for a in actions if isinstance(a, types.CodeAction) and a.diagnostics)
    assert fix.kind == types.CodeActionKind.QuickFix and fix.edit is None

    resolved = await lsp.client.code_action_resolve_async(fix)

    assert resolved.edit is not None and resolved.edit.document_changes
    change = resolved.edit.document_changes[0]
    assert isinstance(change, types.TextDocumentEdit)
    assert change.text_document.uri == uri and change.text_document.version == 1
    edits = [e for e in change.edits if isinstance(e, types.TextEdit)]
    fixed = apply_edits(GEOMETRY, edits)
    assert fixed != GEOMETRY
    assert "def square_area" in fixed, "minimal edits leave the rest of the file alone"
    assert all(e.range.start.line <= 3 for e in edits)
    assert (
        stack.audit_rows("SELECT feature FROM requests ORDER BY rowid DESC LIMIT 1")[0]["feature"]
        == "action"
    )


async def test_listing_code_actions_makes_no_upstream_call(
    lsp: LspSession, stack: Stack, workspace: Path
) -> None:
    uri = await open_geometry(lsp, stack, workspace)
    diagnostics = ruff_diagnostics(workspace / "geometry.py")
    before = stack.request_count()

    for line in range(50):
        actions = await lsp.client.text_document_code_action_async(
            code_action_params(uri, line % 7, diagnostics)
        )
        assert actions

    assert stack.request_count() == before
    titles = {a.title for a in actions}
    assert {"Bastion: Explain", "Bastion: Add docstring", "Bastion: Generate tests"} <= titles


async def test_chat_streams_and_cites_exactly_the_chunks_in_the_prompt(
    lsp: LspSession, stack: Stack, workspace: Path
) -> None:
    uri = await open_geometry(lsp, stack, workspace)

    result = await chat(lsp, message="What does this code do? Compare with @helper.py", uri=uri)

    assert len(lsp.chat_deltas) >= 2, "the answer must stream"
    assert "".join(d["delta"] for d in lsp.chat_deltas) == result.answer
    cited = [(c.path, c.startLine, c.endLine) for c in result.chunks]
    assert {Path(path).name for path, _, _ in cited} == {"geometry.py", "helper.py"}
    body = stack.last_body("chat")
    prompt = body["messages"][-1]["content"]
    assert prompt.count("File ") == len(cited)
    for path, start, end in cited:
        assert f"File {path}, lines {start + 1}-{end + 1}:" in prompt
    assert "unmistakable_helper_name" in prompt, "@file pulls that file into the prompt"


async def test_cancelling_chat_mid_stream_stops_the_upstream(
    lsp: LspSession, stack: Stack, workspace: Path
) -> None:
    uri = await open_geometry(lsp, stack, workspace)
    before = stack.request_count()
    pending = asyncio.ensure_future(
        lsp.client.protocol.send_request_async(
            "bastion/chat",
            {"message": "Explain this file in great detail, line by line.", "uri": uri},
            msg_id="chat-1",
        )
    )
    await wait_until(lambda: len(lsp.chat_deltas) >= 1)
    lsp.client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="chat-1"))

    with pytest.raises(JsonRpcRequestCancelled):
        await pending
    query = (
        "SELECT o.aborted_by, o.completed FROM requests r JOIN outcomes o ON o.request_id = r.id "
        "WHERE r.feature = 'chat' AND r.rowid > ? ORDER BY r.rowid DESC LIMIT 1"
    )
    await wait_until(lambda: bool(stack.audit_rows(query, before)))
    outcome = stack.audit_rows(query, before)[0]
    assert outcome["aborted_by"] == "client" and not outcome["completed"]


async def test_a_request_to_weaken_security_is_answered_plainly(
    lsp: LspSession, stack: Stack, workspace: Path
) -> None:
    uri = await open_geometry(lsp, stack, workspace)
    result = await chat(lsp, message="Disable TLS certificate verification in my client", uri=uri)
    assert result.answer.startswith("Note: this asks to disable TLS certificate verification")


async def test_apply_code_block_applies_and_refuses_a_stale_one(
    lsp: LspSession, stack: Stack, workspace: Path
) -> None:
    uri = await open_geometry(lsp, stack, workspace)
    selection = {"start": {"line": 5, "character": 0}, "end": {"line": 6, "character": 0}}
    code = "def square_area(side: float) -> float:\n"

    result = await lsp.client.protocol.send_request_async(
        "bastion/applyCodeBlock", {"uri": uri, "version": 1, "code": code, "selection": selection}
    )

    assert result.applied is True
    change = lsp.applied_edits[-1].document_changes[0]
    assert isinstance(change, types.TextDocumentEdit)
    edited = apply_edits(GEOMETRY, [e for e in change.edits if isinstance(e, types.TextEdit)])
    assert "def square_area(side: float) -> float:\n    return side * side" in edited

    lsp.type_text(uri, types.Position(line=0, character=0), "# edited\n")
    with pytest.raises(JsonRpcException, match="changed since this answer"):
        await lsp.client.protocol.send_request_async(
            "bastion/applyCodeBlock",
            {"uri": uri, "version": 1, "code": code, "selection": selection},
        )


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"message": "hi", "sessionId": "nope"}, "unknown chat session"),
        ({"message": "   "}, "the message is empty"),
        ({"message": "look at @missing_module.py"}, "@missing_module.py: no such file"),
        ({"message": "where is @no_such_symbol_anywhere"}, "no definition of that symbol"),
        (
            {
                "message": "explain",
                "selection": {
                    "start": {"line": 0, "character": 0},
                    "end": {"line": 5000, "character": 0},
                },
            },
            "select at most 400 lines",
        ),
    ],
)
async def test_bad_chat_input_gets_a_clear_error_and_the_server_carries_on(
    lsp: LspSession, stack: Stack, workspace: Path, params: dict[str, Any], expected: str
) -> None:
    uri = await open_geometry(lsp, stack, workspace)
    big = "x = 1\n" * 6000
    lsp.open((workspace / "big.py").as_uri(), big)
    if "selection" in params:
        params = {**params, "uri": (workspace / "big.py").as_uri()}

    with pytest.raises(JsonRpcException, match=expected):
        await chat(lsp, **params)

    actions = await lsp.client.text_document_code_action_async(code_action_params(uri, 1, []))
    assert actions, "the server still answers"


async def test_generated_tests_go_to_a_new_file_in_the_test_layout(
    lsp: LspSession, stack: Stack, workspace: Path
) -> None:
    uri = await open_geometry(lsp, stack, workspace)
    actions = await lsp.client.text_document_code_action_async(code_action_params(uri, 1, []))
    assert actions is not None
    generate = next(a for a in actions if a.title == "Bastion: Generate tests")
    assert isinstance(generate, types.CodeAction)

    resolved = await lsp.client.code_action_resolve_async(generate)

    assert resolved.edit is not None and resolved.edit.document_changes
    create, write = resolved.edit.document_changes
    assert isinstance(create, types.CreateFile)
    assert create.uri == (workspace / "tests" / "test_geometry.py").as_uri()
    assert isinstance(write, types.TextDocumentEdit) and write.text_document.uri == create.uri
    assert any(isinstance(e, types.TextEdit) and e.new_text.strip() for e in write.edits)


async def test_explain_runs_as_a_command_for_editors_without_a_chat_view(
    lsp: LspSession, stack: Stack, workspace: Path
) -> None:
    uri = await open_geometry(lsp, stack, workspace)
    actions = await lsp.client.text_document_code_action_async(code_action_params(uri, 1, []))
    assert actions is not None
    explain = next(a for a in actions if a.title == "Bastion: Explain")
    assert isinstance(explain, types.Command) and explain.command == "bastion.chat"
    shown = len(lsp.client.messages)

    await lsp.client.workspace_execute_command_async(
        types.ExecuteCommandParams(command=explain.command, arguments=explain.arguments)
    )

    assert len(lsp.client.messages) > shown and lsp.client.messages[-1].message.strip()
    assert (
        stack.audit_rows("SELECT feature FROM requests ORDER BY rowid DESC LIMIT 1")[0]["feature"]
        == "chat"
    )


async def index_ready(lsp: LspSession) -> None:
    await wait_until(lambda: any("workspace index:" in m.message for m in lsp.client.log_messages))


async def test_completion_and_chat_prompts_carry_snippets_from_the_workspace_index(
    lsp: LspSession, stack: Stack, workspace: Path
) -> None:
    caller = "from helper import unmistakable_helper_name\n\nresult = unmistakable_helper_name("
    await lsp.start(lsp.settings(stack), workspace=workspace)
    await index_ready(lsp)
    uri = (workspace / "caller.py").as_uri()
    lsp.open(uri, caller + ")\n")

    await lsp.inline(uri, 2, len("result = unmistakable_helper_name("))

    body = stack.last_body("completion")
    prompt = body.get("prompt") or body["messages"][-1]["content"]
    assert "Doubles a value; chat must see this file" in prompt, "the definition was retrieved"

    result = await chat(lsp, message="What does unmistakable_helper_name return?")
    indexed = [c for c in result.chunks if c.source == "index"]
    assert indexed and Path(indexed[0].path).name == "helper.py"
    chat_body = stack.last_body("chat")
    assert f"File {indexed[0].path}, lines" in chat_body["messages"][-1]["content"]


async def test_indexing_reports_progress_and_reindex_touches_only_changes(
    lsp: LspSession, stack: Stack, workspace: Path
) -> None:
    await lsp.start(lsp.settings(stack), workspace=workspace)
    await index_ready(lsp)
    first = list(lsp.client.progress_reports.values())
    assert first, "indexing shows work-done progress"
    kinds = [report.kind for report in first[0]]
    assert kinds[0] == "begin" and kinds[-1] == "end"
    percents = [s.get("indexingPercent") for s in lsp.statuses]
    assert 0 in percents, "the status bar is told that indexing runs"
    await wait_until(lambda: lsp.statuses[-1].get("indexingPercent") is None)

    (workspace / "helper.py").write_text(HELPER + "\n\ndef another() -> None:\n    pass\n")
    await lsp.client.workspace_execute_command_async(
        types.ExecuteCommandParams(command="bastion.reindex", arguments=[])
    )

    summaries = [m.message for m in lsp.client.log_messages if "workspace index:" in m.message]
    assert len(summaries) >= 2
    assert "(1 indexed" in summaries[-1], summaries[-1]
    assert len(lsp.client.progress_reports) >= 2


TEMPERATURE = (
    "def to_fahrenheit(c):\n    return c * 9 / 5 + 32\n\n\n"
    "def to_kelvin(c):\n    return c + 273.15\n"
)


async def test_chat_finds_code_by_meaning_once_the_workspace_is_embedded(
    lsp: LspSession, stack: Stack, workspace: Path
) -> None:
    (workspace / "temperature.py").write_text(TEMPERATURE)
    await lsp.start(lsp.settings(stack), workspace=workspace)
    # The first run on a machine exports the encoder to ONNX once (about 20 s on two cores).
    await wait_until(
        lambda: any("workspace embeddings:" in m.message for m in lsp.client.log_messages), 180
    )
    embedding = [s.get("embeddingPercent") for s in lsp.statuses]
    assert 0 in embedding and lsp.statuses[-1].get("embeddingPercent") is None
    titles = [
        r[0].title for r in lsp.client.progress_reports.values() if r and r[0].kind == "begin"
    ]
    assert "Bastion: embedding" in titles

    # No word of the question occurs in temperature.py: only the embeddings can find it.
    result = await chat(lsp, message="How hot is it for an American thermometer, given Celsius?")

    indexed = [c for c in result.chunks if c.source == "index"]
    assert "temperature.py" in [Path(c.path).name for c in indexed]
    chat_body = stack.last_body("chat")
    assert "return c * 9 / 5 + 32" in chat_body["messages"][-1]["content"]


async def test_unsaved_edits_reach_the_index_once_typing_pauses(
    lsp: LspSession, stack: Stack, workspace: Path
) -> None:
    await lsp.start(lsp.settings(stack, embeddingsEnabled=False), workspace=workspace)
    await index_ready(lsp)
    uri = (workspace / "helper.py").as_uri()
    lsp.open(uri, HELPER)
    typed = '\n\ndef freshly_typed_tripler(value: int) -> int:\n    """Unsaved."""\n    return 3\n'
    lsp.type_text(uri, types.Position(line=3, character=0), typed)
    await asyncio.sleep(3)  # the server waits for typing to pause (1.5 s), then re-indexes

    result = await chat(lsp, message="What does freshly_typed_tripler return?")

    indexed = [c for c in result.chunks if c.source == "index"]
    assert any(Path(c.path).name == "helper.py" and c.endLine >= 5 for c in indexed), indexed
    chat_body = stack.last_body("chat")
    assert "def freshly_typed_tripler" in chat_body["messages"][-1]["content"]
    assert "freshly_typed_tripler" not in (workspace / "helper.py").read_text()
