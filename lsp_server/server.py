"""`bastion lsp`: the language server. Handlers read params, call the domain, return LSP types."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlparse

from lsprotocol import types
from pydantic import ValidationError
from pygls.exceptions import JsonRpcContentModified, JsonRpcInternalError, JsonRpcInvalidParams
from pygls.lsp.server import LanguageServer
from pygls.progress import Progress
from pygls.uris import to_fs_path

from index.embeddings import EncoderConfig
from inference import ModelError, Snippet

from . import __version__
from .actions import ActionRefused, list_actions, read_data, resolve_action
from .chat import (
    DELTA_METHOD,
    ApplyCodeBlockParams,
    ChatError,
    ChatParams,
    ChatResult,
    ChatSessions,
    Workspace,
    code_block_edit,
    run_chat,
)
from .client_log import ClientLogHandler, configure
from .completions import CompletionInput, InlineCompleter
from .connection import ProxyConnection
from .lifecycle import EXIT_GRACE_S, QuietAfterExitProtocol, end_process_after
from .settings import Settings, parse_settings
from .status import STATUS_METHOD, StatusReporter
from .typing_cache import TypingCache
from .workspace_index import IndexService

if TYPE_CHECKING:
    from pygls.server import ServerErrors

log = logging.getLogger(__name__)

T = TypeVar("T")


class BastionLanguageServer(LanguageServer):
    """Document state, settings, cancellation; the completion work lives in InlineCompleter."""

    def __init__(self) -> None:
        super().__init__("bastion", __version__, protocol_cls=QuietAfterExitProtocol)
        self.status = StatusReporter(lambda params: self.protocol.notify(STATUS_METHOD, params))
        self.typing_cache = TypingCache()
        self.connection = ProxyConnection(Settings())
        self.index = IndexService(
            self.log_line,
            lambda percent: self.status.update(indexing_percent=percent),
            lambda percent: self.status.update(embedding_percent=percent),
        )
        self.completer = InlineCompleter(
            lambda: self.connection,
            self.typing_cache,
            self.status,
            self.log_line,
            self.completion_snippets,
        )
        self._in_flight: dict[str, asyncio.Task[Any]] = {}
        self.chat_sessions = ChatSessions()
        self.client_log: ClientLogHandler | None = None
        self.shut_down = False

    def report_server_error(self, error: Exception, source: ServerErrors) -> None:
        # A message that could not be sent (pygls has logged it) is not reported by sending
        # another: that one fails too, and pygls reports it again, without end.
        if source is not JsonRpcInternalError:
            super().report_server_error(error, source)

    def exiting(self) -> None:
        """The client said `exit`: nothing more goes to it, and the process ends in time."""
        assert isinstance(self.protocol, QuietAfterExitProtocol)
        self.protocol.exited = True
        if self.client_log is not None:
            self.client_log.detach()
        end_process_after(EXIT_GRACE_S, 0 if self.shut_down else 1)

    def chat_workspace(self) -> Workspace:
        roots = [Path(to_fs_path(f.uri) or ".") for f in self.workspace.folders.values()]
        if not roots and self.workspace.root_path:
            roots = [Path(self.workspace.root_path)]

        def open_text(uri: str) -> str | None:
            document = self.workspace.text_documents.get(uri)
            return document.source if document is not None else None

        return Workspace(roots=roots, open_text=open_text)

    def completion_snippets(self, request: CompletionInput) -> list[Snippet]:
        line, column = request.line_and_column
        return self.index.for_completion(request.path, request.text, line, column)

    def progress_for_client(self) -> Progress | None:
        window = self.client_capabilities.window
        return self.work_done_progress if window and window.work_done_progress else None

    def embedding_config(self) -> EncoderConfig | None:
        settings = self.connection.settings
        if not settings.embeddings_enabled:
            return None
        return EncoderConfig(
            model_path=settings.embedding_model_path, backend=settings.embedding_backend
        )

    def start_indexing(self) -> None:
        if self.connection.settings.indexing_enabled:
            work = self.reindex()
            asyncio.get_running_loop().create_task(work)

    async def reindex(self) -> None:
        roots = list(self.chat_workspace().roots)
        await self.index.start(roots, self.progress_for_client(), self.embedding_config())

    async def chat_turn(self, request: ChatParams) -> ChatResult:
        return await run_chat(
            request,
            self.chat_sessions,
            self.chat_workspace(),
            self.connection,
            self.send_chat_delta,
            self.index.for_chat,
        )

    def send_chat_delta(self, session_id: str, delta: str) -> None:
        self.protocol.notify(DELTA_METHOD, {"sessionId": session_id, "delta": delta})

    def apply_settings(self, raw: Any) -> None:
        settings, problems = parse_settings(raw)
        for problem in problems:
            self.window_show_message(
                types.ShowMessageParams(type=types.MessageType.Warning, message=str(problem))
            )
        previous = self.connection
        self.connection = ProxyConnection(settings)
        self.status.update(proxy_url=settings.proxy_url, model=None, completion_mode=None)
        asyncio.get_event_loop().create_task(previous.aclose())

    async def check_connection(self) -> None:
        """Ask the proxy about the served model now, so the status bar is right before typing."""
        try:
            profile = await self.connection.profile()
        except ModelError as error:
            self.status.failed(error)
        else:
            self.status.connected(model=profile.model, completion_mode=profile.mode_name)

    def log_line(self, message: str) -> None:
        log.info(message)

    async def latest_only(self, uri: str, work: Awaitable[T]) -> T:
        """Run `work` as this document's only request: a newer one cancels it."""
        previous = self._in_flight.get(uri)
        if previous is not None and not previous.done():
            previous.cancel()
        current = asyncio.current_task()
        assert current is not None
        self._in_flight[uri] = current
        try:
            return await work
        finally:
            if self._in_flight.get(uri) is current:
                del self._in_flight[uri]

    async def suggestion(self, uri: str, position: types.Position) -> str | None:
        """The completion at `position`, as this document's only request in flight."""
        request = self.completion_input(uri, position)
        if request is None:
            return None
        return await self.latest_only(uri, self.completer.complete(request))

    def completion_input(self, uri: str, position: types.Position) -> CompletionInput | None:
        """The document around `position`, or None when the position is not in it."""
        document = self.workspace.get_text_document(uri)
        lines = document.lines
        if position.line > len(lines) or (position.line == len(lines) and position.character):
            return None
        if position.line < len(lines):
            line = lines[position.line].rstrip("\r\n")
            if position.character > document.position_codec.client_num_units(line):
                return None
        return CompletionInput(
            uri=uri,
            path=path_of(uri),
            language_id=document.language_id or "plaintext",
            text=document.source,
            offset=document.offset_at_position(position),
        )


def path_of(uri: str) -> str:
    parsed = urlparse(uri)
    return unquote(parsed.path) if parsed.scheme == "file" else PurePath(parsed.path).name or uri


server = BastionLanguageServer()


@server.feature(types.INITIALIZE)
def on_initialize(ls: BastionLanguageServer, params: types.InitializeParams) -> None:
    ls.apply_settings(params.initialization_options)


@server.feature(types.INITIALIZED)
async def on_initialized(ls: BastionLanguageServer, params: types.InitializedParams) -> None:
    if ls.client_log is not None:
        ls.client_log.attach(asyncio.get_running_loop())
    ls.start_indexing()
    await ls.check_connection()


@server.feature(types.SHUTDOWN)
async def on_shutdown(ls: BastionLanguageServer, params: None) -> None:
    ls.shut_down = True
    await ls.index.close()


@server.feature(types.EXIT)
def on_exit(ls: BastionLanguageServer, params: None) -> None:
    ls.exiting()


@server.command("bastion.reindex")
async def reindex(ls: BastionLanguageServer, *arguments: Any) -> None:
    """Bring the workspace index up to date now (changed files only), with progress."""
    await ls.reindex()


@server.feature(types.TEXT_DOCUMENT_DID_SAVE)
async def on_save(ls: BastionLanguageServer, params: types.DidSaveTextDocumentParams) -> None:
    document = ls.workspace.get_text_document(params.text_document.uri)
    await ls.index.file_saved(Path(document.path), document.source)


@server.feature(types.WORKSPACE_DID_CHANGE_WATCHED_FILES)
async def on_watched_files(
    ls: BastionLanguageServer, params: types.DidChangeWatchedFilesParams
) -> None:
    for change in params.changes:
        path = Path(to_fs_path(change.uri) or change.uri)
        if change.type == types.FileChangeType.Deleted:
            await ls.index.file_deleted(path)
        else:
            await ls.index.file_saved(path, None)


@server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
async def on_configuration(
    ls: BastionLanguageServer, params: types.DidChangeConfigurationParams
) -> None:
    ls.apply_settings(params.settings)
    await ls.check_connection()


@server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
def on_change(ls: BastionLanguageServer, params: types.DidChangeTextDocumentParams) -> None:
    uri = params.text_document.uri
    document = ls.workspace.get_text_document(uri)

    def current_text() -> str | None:
        latest = ls.workspace.text_documents.get(uri)
        return latest.source if latest is not None else None

    # The cursor is at the end of the last change, on the line after its last newline.
    last = params.content_changes[-1] if params.content_changes else None
    line = None
    if isinstance(last, types.TextDocumentContentChangePartial):
        line = last.range.start.line + last.text.count("\n")
    ls.index.file_changed(Path(document.path), current_text, line)


@server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
async def on_close(ls: BastionLanguageServer, params: types.DidCloseTextDocumentParams) -> None:
    ls.typing_cache.forget(params.text_document.uri)
    path = to_fs_path(params.text_document.uri)
    if path:
        await ls.index.file_closed(Path(path))


@server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
async def inline_completion(
    ls: BastionLanguageServer, params: types.InlineCompletionParams
) -> types.InlineCompletionList | None:
    if not ls.connection.settings.inline_completion_enabled:
        return None
    text = await ls.suggestion(params.text_document.uri, params.position)
    if not text:
        return None
    at_cursor = types.Range(start=params.position, end=params.position)
    return types.InlineCompletionList(
        items=[types.InlineCompletionItem(insert_text=text, range=at_cursor)]
    )


@server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(trigger_characters=[]))
async def completion(
    ls: BastionLanguageServer, params: types.CompletionParams
) -> types.CompletionList | None:
    """The fallback for clients without inline completion: one item holding the suggestion."""
    text = await ls.suggestion(params.text_document.uri, params.position)
    if not text:
        return None
    at_cursor = types.Range(start=params.position, end=params.position)
    item = types.CompletionItem(
        label=text.strip().splitlines()[0],
        kind=types.CompletionItemKind.Snippet,
        detail="Bastion",
        text_edit=types.TextEdit(range=at_cursor, new_text=text),
        insert_text_format=types.InsertTextFormat.PlainText,
        documentation=completion_documentation(ls.client_capabilities, text),
    )
    return types.CompletionList(is_incomplete=True, items=[item])


@server.feature(
    types.TEXT_DOCUMENT_CODE_ACTION,
    types.CodeActionOptions(
        code_action_kinds=[
            types.CodeActionKind.QuickFix,
            types.CodeActionKind.RefactorRewrite,
            types.CodeActionKind.Source,
        ],
        resolve_provider=True,
    ),
)
def code_actions(
    ls: BastionLanguageServer, params: types.CodeActionParams
) -> list[types.CodeAction | types.Command] | None:
    """Listed without calling the model; the model is asked only in `codeAction/resolve`."""
    document = ls.workspace.get_text_document(params.text_document.uri)
    return list(
        list_actions(
            document.uri,
            document.version or 0,
            document.lines,
            params.range,
            params.context.diagnostics,
        )
    )


@server.feature(types.CODE_ACTION_RESOLVE)
async def resolve_code_action(
    ls: BastionLanguageServer, action: types.CodeAction
) -> types.CodeAction:
    try:
        data = read_data(action)
        document = ls.workspace.get_text_document(data.uri)
        if document.version != data.version:
            raise JsonRpcContentModified(
                f"{data.uri} changed since this action was listed; ask for code actions again"
            )
        path = Path(to_fs_path(data.uri) or data.uri)
        roots = ls.chat_workspace().roots
        return await resolve_action(
            action,
            data,
            connection=ls.connection,
            lines=document.lines,
            path=path,
            language=document.language_id or "plaintext",
            workspace_root=roots[0] if roots else None,
        )
    except (ActionRefused, ModelError) as error:
        ls.window_show_message(
            types.ShowMessageParams(type=types.MessageType.Warning, message=f"Bastion: {error}")
        )
        raise JsonRpcInvalidParams(str(error)) from None


@server.feature("bastion/chat")
async def chat(ls: BastionLanguageServer, params: Any) -> dict[str, Any]:
    """One chat turn, streamed as `bastion/chatDelta`; cancellable with `$/cancelRequest`."""
    try:
        result = await ls.chat_turn(ChatParams.model_validate(plain(params)))
    except ValidationError as error:
        raise JsonRpcInvalidParams(describe(error)) from None
    except (ChatError, ModelError) as error:
        raise JsonRpcInvalidParams(str(error)) from None
    return result.model_dump(by_alias=True)


@server.command("bastion.chat")
async def chat_command(ls: BastionLanguageServer, *arguments: Any) -> dict[str, Any] | None:
    """The Explain action for editors without a chat view: the answer as a message."""
    try:
        result = await ls.chat_turn(
            ChatParams.model_validate(plain(arguments[0]) if arguments else {})
        )
    except (ValidationError, ChatError, ModelError) as error:
        message = describe(error) if isinstance(error, ValidationError) else str(error)
        ls.window_show_message(
            types.ShowMessageParams(type=types.MessageType.Warning, message=f"Bastion: {message}")
        )
        return None
    ls.window_show_message(
        types.ShowMessageParams(type=types.MessageType.Info, message=result.answer)
    )
    return result.model_dump(by_alias=True)


@server.feature("bastion/applyCodeBlock")
async def apply_code_block(ls: BastionLanguageServer, params: Any) -> dict[str, Any]:
    """Apply a code block from an answer through `workspace/applyEdit`, if still current."""
    try:
        request = ApplyCodeBlockParams.model_validate(plain(params))
        document = ls.workspace.get_text_document(request.uri)
        edit = code_block_edit(request, document.version, document.lines)
    except ValidationError as error:
        raise JsonRpcInvalidParams(describe(error)) from None
    except ChatError as error:
        raise JsonRpcContentModified(str(error)) from None
    result = await ls.workspace_apply_edit_async(
        types.ApplyWorkspaceEditParams(edit=edit, label="Bastion: apply code block")
    )
    return {"applied": result.applied, "failureReason": result.failure_reason}


def completion_documentation(
    capabilities: types.ClientCapabilities, text: str
) -> types.MarkupContent:
    """The suggestion as documentation, in Markdown only where the client renders it."""
    completion_caps = capabilities.text_document and capabilities.text_document.completion
    item_caps = completion_caps and completion_caps.completion_item
    formats = (item_caps and item_caps.documentation_format) or []
    if types.MarkupKind.Markdown in formats:
        return types.MarkupContent(kind=types.MarkupKind.Markdown, value=f"```\n{text}\n```")
    return types.MarkupContent(kind=types.MarkupKind.PlainText, value=text)


def plain(value: Any) -> Any:
    """pygls hands custom requests' params over as namedtuples; pydantic wants dicts."""
    if hasattr(value, "_asdict"):
        value = value._asdict()
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value


def describe(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in e['loc']) or 'params'}: {e['msg']}"
        for e in error.errors()
    )


def run_stdio() -> None:
    server.client_log = configure(server.window_log_message)
    server.start_io()
