"""Chat: sessions with bounded history, context from the editor, answers streamed as deltas.

The answer carries the chunks that were in the prompt, so the user sees what the model saw.
"""

from __future__ import annotations

import re
import secrets
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lsprotocol.types import (
    OptionalVersionedTextDocumentIdentifier,
    TextDocumentEdit,
    WorkspaceEdit,
)
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel
from pygls.uris import to_fs_path

from inference import ChatMessage, Snippet
from inference.assist import build_chat_messages, security_concern

from .connection import ProxyConnection
from .edits import LineRegion, minimal_edits

FEATURE = "chat"
DELTA_METHOD = "bastion/chatDelta"
MAX_SELECTION_LINES = 400
MAX_SELECTION_CHARS = 24_000
FILE_WINDOW_LINES = 120
SYMBOL_MAX_LINES = 80
SOURCE_SUFFIXES = {".py", ".js", ".ts", ".tsx", ".jsx", ".go", ".rs", ".java", ".c", ".h", ".cpp"}
FILE_MENTION = re.compile(r"@([\w./-]+\.\w+)")
SYMBOL_MENTION = re.compile(r"@([A-Za-z_]\w*)\b(?!\.\w)")


class ChatError(Exception):
    """Bad chat input; the message says what to do."""


class _Camel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)


class LinePosition(_Camel):
    line: int = Field(ge=0)
    character: int = Field(ge=0)


class Selection(_Camel):
    start: LinePosition
    end: LinePosition


class ChatParams(_Camel):
    message: str
    session_id: str | None = None
    uri: str | None = None
    selection: Selection | None = None

    @field_validator("message")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the message is empty; type a question or a /command")
        return value


class ChatChunk(_Camel):
    path: str
    start_line: int
    end_line: int
    source: str


class ChatResult(_Camel):
    session_id: str
    answer: str
    chunks: list[ChatChunk]


@dataclass
class ChatSession:
    history: deque[ChatMessage]


class ChatSessions:
    """Sessions kept in the server, each with its last few turns."""

    def __init__(self, max_sessions: int = 32, max_messages: int = 12) -> None:
        self._max_sessions = max_sessions
        self._max_messages = max_messages
        self._sessions: OrderedDict[str, ChatSession] = OrderedDict()

    def open(self, session_id: str | None) -> tuple[str, ChatSession]:
        if session_id is None:
            session_id = secrets.token_hex(8)
            self._sessions[session_id] = ChatSession(deque(maxlen=self._max_messages))
            while len(self._sessions) > self._max_sessions:
                self._sessions.popitem(last=False)
        elif session_id not in self._sessions:
            raise ChatError(f"unknown chat session '{session_id}'; start a new chat without one")
        self._sessions.move_to_end(session_id)
        return session_id, self._sessions[session_id]


@dataclass(frozen=True)
class Workspace:
    """What chat may read: open documents first, then files under the workspace roots."""

    roots: Sequence[Path]
    open_text: Callable[[str], str | None]

    def read(self, path: Path) -> str | None:
        text = self.open_text(path.as_uri())
        if text is not None:
            return text
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None

    def find_file(self, name: str, near: Path | None) -> Path | None:
        candidates = [Path(name)] if Path(name).is_absolute() else []
        bases = [*([near.parent] if near else []), *self.roots]
        candidates += [base / name for base in bases]
        return next((c for c in candidates if c.is_file()), None)

    def source_files(self, limit: int = 2000) -> list[Path]:
        found: list[Path] = []
        for root in self.roots:
            for path in root.rglob("*"):
                if len(found) >= limit:
                    return found
                hidden = any(part.startswith(".") for part in path.relative_to(root).parts)
                if path.suffix in SOURCE_SUFFIXES and not hidden and path.is_file():
                    found.append(path)
        return found


def _lines_snippet(path: Path, text: str, start: int, end: int) -> Snippet:
    lines = text.splitlines()
    end = min(end, len(lines))
    return Snippet(str(path), start, max(end - 1, start), "\n".join(lines[start:end]))


def selection_snippet(path: Path, text: str, selection: Selection) -> Snippet | None:
    start, end = selection.start.line, selection.end.line + (1 if selection.end.character else 0)
    if end <= start:
        return None
    if end - start > MAX_SELECTION_LINES:
        raise ChatError(
            f"the selection is {end - start} lines; select at most {MAX_SELECTION_LINES} lines"
        )
    snippet = _lines_snippet(path, text, start, end)
    if len(snippet.text) > MAX_SELECTION_CHARS:
        raise ChatError(
            f"the selection is {len(snippet.text)} characters; select at most {MAX_SELECTION_CHARS}"
        )
    return snippet


def file_window(path: Path, text: str, around: int) -> Snippet:
    start = max(0, around - FILE_WINDOW_LINES // 2)
    return _lines_snippet(path, text, start, start + FILE_WINDOW_LINES)


def symbol_snippet(workspace: Workspace, name: str) -> Snippet | None:
    definition = re.compile(
        rf"^(\s*)(async\s+def|def|class|function|func|fn|struct|interface|type)\s+{re.escape(name)}\b"
    )
    for path in workspace.source_files():
        text = workspace.read(path)
        if text is None or name not in text:
            continue
        lines = text.splitlines()
        for number, line in enumerate(lines):
            if match := definition.match(line):
                indent, end = len(match.group(1)), number + 1
                while end < len(lines) and end - number < SYMBOL_MAX_LINES:
                    body = lines[end]
                    if body.strip() and len(body) - len(body.lstrip()) <= indent:
                        break
                    end += 1
                return _lines_snippet(path, text, number, end)
    return None


def _overlaps(snippet: Snippet, chunks: list[tuple[Snippet, str]]) -> bool:
    return any(
        Path(other.path).name == Path(snippet.path).name
        and other.start_line <= snippet.end_line
        and snippet.start_line <= other.end_line
        for other, _ in chunks
    )


def gather_context(
    params: ChatParams,
    workspace: Workspace,
    index_snippets: Callable[[str], list[Snippet]] = lambda query: [],
) -> list[tuple[Snippet, str]]:
    """The snippets this chat request puts in the prompt, each with where it came from."""
    chunks: list[tuple[Snippet, str]] = []
    current = Path(to_fs_path(params.uri) or params.uri) if params.uri else None
    if current is not None:
        text = workspace.read(current)
        if text is None:
            raise ChatError(f"cannot read {current}")
        selected = selection_snippet(current, text, params.selection) if params.selection else None
        if selected is not None:
            chunks.append((selected, "selection"))
        else:
            cursor = params.selection.start.line if params.selection else 0
            chunks.append((file_window(current, text, cursor), "file"))
    for name in FILE_MENTION.findall(params.message):
        path = workspace.find_file(name, current)
        text = workspace.read(path) if path else None
        if path is None or text is None:
            raise ChatError(f"@{name}: no such file in the workspace; check the path")
        chunks.append((_lines_snippet(path, text, 0, FILE_WINDOW_LINES * 2), "mention"))
    for name in SYMBOL_MENTION.findall(FILE_MENTION.sub("", params.message)):
        found = symbol_snippet(workspace, name)
        if found is None:
            raise ChatError(f"@{name}: no definition of that symbol found in the workspace")
        chunks.append((found, "symbol"))
    for found in index_snippets(params.message):
        if not _overlaps(found, chunks):
            chunks.append((found, "index"))
    return chunks


async def run_chat(
    params: ChatParams,
    sessions: ChatSessions,
    workspace: Workspace,
    connection: ProxyConnection,
    send_delta: Callable[[str, str], None],
    index_snippets: Callable[[str], list[Snippet]] = lambda query: [],
) -> ChatResult:
    """One chat turn: context, prompt, streamed answer, history."""
    session_id, session = sessions.open(params.session_id)
    chunks = gather_context(params, workspace, index_snippets)
    snippets = [snippet for snippet, _ in chunks]
    concern = security_concern(params.message)
    messages = build_chat_messages(params.message, snippets, list(session.history), concern)
    profile = await connection.profile()
    answer = ""
    if concern is not None:
        answer = concern.notice() + "\n\n"
        send_delta(session_id, answer)
    async for delta in connection.client.stream_chat(
        messages,
        model=profile.model,
        max_tokens=max(connection.settings.max_tokens, 512),
        temperature=connection.settings.temperature,
        stop=[],
        feature=FEATURE,
    ):
        answer += delta
        send_delta(session_id, delta)
    session.history.extend([messages[-1], ChatMessage(role="assistant", content=answer)])
    cited = [
        ChatChunk(path=s.path, start_line=s.start_line, end_line=s.end_line, source=source)
        for s, source in chunks
    ]
    return ChatResult(session_id=session_id, answer=answer, chunks=cited)


class ApplyCodeBlockParams(_Camel):
    uri: str
    version: int
    code: str
    selection: Selection | None = None


def code_block_edit(
    params: ApplyCodeBlockParams, current_version: int | None, lines: Sequence[str]
) -> WorkspaceEdit:
    """Minimal edits that put the code block in place of the selection (or at its start)."""
    if current_version != params.version:
        raise ChatError(
            f"{params.uri} changed since this answer (version {params.version}, now "
            f"{current_version}); ask again so the code fits the current text"
        )
    if params.selection is None:
        region = LineRegion(len(lines), len(lines))
    else:
        start, end = params.selection.start.line, params.selection.end.line
        end += 1 if params.selection.end.character or end == start else 0
        region = LineRegion(start, min(end, len(lines)))
    if params.selection is not None and params.selection.start == params.selection.end:
        region = LineRegion(params.selection.start.line, params.selection.start.line)
    code = params.code if params.code.endswith("\n") else params.code + "\n"
    edits = minimal_edits(lines, region, code)
    return WorkspaceEdit(
        document_changes=[
            TextDocumentEdit(
                text_document=OptionalVersionedTextDocumentIdentifier(
                    uri=params.uri, version=params.version
                ),
                edits=list(edits),
            )
        ]
    )
