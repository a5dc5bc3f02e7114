"""Fixtures: a real stack per session, a real `bastion lsp` per test, speaking LSP over stdio."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient

from .stacks import TIERS, Stack, tier_stack

STATUS = "bastion/status"


@pytest.fixture(scope="session", params=TIERS)
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """A real model behind a real proxy, once per tier (llama.cpp's server, vLLM)."""
    with tier_stack(request.param, tmp_path_factory.mktemp("stack")) as running:
        yield running


@pytest.fixture(scope="session", params=TIERS)
def qwen_fim_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """SmolLM2 whose tokenizer also has Qwen2.5-Coder's FIM tokens, once per tier."""
    with tier_stack(request.param, tmp_path_factory.mktemp("qwen-fim"), "qwen-fim") as running:
        yield running


class LspSession:
    """A language client plus what the server told it outside of responses."""

    def __init__(self, client: LanguageClient) -> None:
        self.client = client
        self.statuses: list[dict[str, Any]] = []
        self.chat_deltas: list[dict[str, Any]] = []
        self.applied_edits: list[types.WorkspaceEdit] = []
        self._version: dict[str, int] = {}

    def settings(self, stack: Stack, **overrides: Any) -> dict[str, Any]:
        # Greedy decoding: the same prompt gets the same answer, so tests are repeatable.
        # A generous timeout: a loaded 2-core CI machine must not turn slowness into failures.
        base = {
            "proxyUrl": stack.proxy_url,
            "apiKey": stack.user_key,
            "temperature": 0,
            "requestTimeoutS": 60,
        }
        return {**base, **overrides}

    async def start(
        self, initialization_options: dict[str, Any], workspace: Path | None = None
    ) -> None:
        folders = (
            [types.WorkspaceFolder(uri=workspace.as_uri(), name=workspace.name)]
            if workspace is not None
            else None
        )
        await self.client.initialize_session(
            types.InitializeParams(
                capabilities=types.ClientCapabilities(
                    workspace=types.WorkspaceClientCapabilities(apply_edit=True),
                    window=types.WindowClientCapabilities(work_done_progress=True),
                ),
                initialization_options=initialization_options,
                workspace_folders=folders,
            )
        )
        # The server asks the proxy about the model right after `initialized`; let that finish
        # so that tests counting audit records start from a settled log.
        deadline = asyncio.get_running_loop().time() + 60
        while not any(s.get("connected") or s.get("lastError") for s in self.statuses):
            assert asyncio.get_running_loop().time() < deadline, "no bastion/status arrived"
            await asyncio.sleep(0.02)

    def open(self, uri: str, text: str, language_id: str = "python") -> None:
        self._version[uri] = 1
        self.client.text_document_did_open(
            types.DidOpenTextDocumentParams(
                text_document=types.TextDocumentItem(
                    uri=uri, language_id=language_id, version=1, text=text
                )
            )
        )

    def type_text(self, uri: str, at: types.Position, text: str) -> None:
        """Insert `text` at `at`, as an incremental change."""
        self._version[uri] += 1
        self.client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(
                    uri=uri, version=self._version[uri]
                ),
                content_changes=[
                    types.TextDocumentContentChangePartial(
                        range=types.Range(start=at, end=at), text=text
                    )
                ],
            )
        )

    async def inline(
        self, uri: str, line: int, character: int
    ) -> types.InlineCompletionList | None:
        result = await self.client.text_document_inline_completion_async(
            self.inline_params(uri, line, character)
        )
        assert result is None or isinstance(result, types.InlineCompletionList)
        return result

    @staticmethod
    def inline_params(uri: str, line: int, character: int) -> types.InlineCompletionParams:
        return types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=types.Position(line=line, character=character),
            context=types.InlineCompletionContext(
                trigger_kind=types.InlineCompletionTriggerKind.Automatic
            ),
        )


def _as_dict(params: Any) -> dict[str, Any]:
    if isinstance(params, dict):
        return params
    if hasattr(params, "_asdict"):
        return dict(params._asdict())
    return dict(vars(params))


@pytest_asyncio.fixture
async def lsp(tmp_path: Path) -> AsyncIterator[LspSession]:
    # Each test's workspace index in its own cache: one left in the user's cache by an earlier
    # run at the same temporary path would already be embedded, and say nothing new.
    config = ClientServerConfig(
        server_command=[sys.executable, "-m", "bastion.cli", "lsp"],
        server_env={**os.environ, "BASTION_INDEX_CACHE": str(tmp_path / "index-cache")},
    )
    client = await config.start()
    session = LspSession(client)

    @client.feature(STATUS)
    def _on_status(params: Any) -> None:
        session.statuses.append(_as_dict(params))

    @client.feature("bastion/chatDelta")
    def _on_chat_delta(params: Any) -> None:
        session.chat_deltas.append(_as_dict(params))

    @client.feature(types.WORKSPACE_APPLY_EDIT)
    def _on_apply_edit(params: types.ApplyWorkspaceEditParams) -> types.ApplyWorkspaceEditResult:
        session.applied_edits.append(params.edit)
        return types.ApplyWorkspaceEditResult(applied=True)

    yield session
    await client.shutdown_session()
    await client.stop()


def file_uri(tmp_path: Path, name: str) -> str:
    return (tmp_path / name).as_uri()
