"""Code actions: listed cheaply (no model call), resolved lazily (one model call, minimal edits)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lsprotocol import types
from pydantic import BaseModel, ConfigDict, ValidationError

from inference import Snippet
from inference.assist import ActionKind, build_action_messages, extract_code

from .connection import ProxyConnection
from .edits import LineRegion, minimal_edits

FEATURE = "action"
BLOCK_START = re.compile(r"^\s*(async\s+def|def|class|function|func|fn|public|private|static)\b")

TITLES: dict[ActionKind, str] = {
    ActionKind.FIX: "Bastion: Fix this",
    ActionKind.EXPLAIN: "Bastion: Explain",
    ActionKind.ADD_DOCSTRING: "Bastion: Add docstring",
    ActionKind.GENERATE_TESTS: "Bastion: Generate tests",
    ActionKind.REFACTOR: "Bastion: Refactor selection",
}
KINDS: dict[ActionKind, types.CodeActionKind] = {
    ActionKind.FIX_DIAGNOSTIC: types.CodeActionKind.QuickFix,
    ActionKind.FIX: types.CodeActionKind.QuickFix,
    ActionKind.ADD_DOCSTRING: types.CodeActionKind.RefactorRewrite,
    ActionKind.GENERATE_TESTS: types.CodeActionKind.Source,
    ActionKind.REFACTOR: types.CodeActionKind.RefactorRewrite,
}


class ActionRefused(Exception):
    """The action cannot be applied; the message says why and what to do."""


class ActionData(BaseModel):
    """What a listed action carries to `codeAction/resolve`."""

    model_config = ConfigDict(frozen=True)

    action: ActionKind
    uri: str
    version: int
    start: int
    end: int
    problem: str = ""


def enclosing_block(lines: Sequence[str], line: int) -> LineRegion:
    """The function or class around `line` (by indentation), else the line itself."""
    line = min(line, max(len(lines) - 1, 0))
    for start in range(line, -1, -1):
        if BLOCK_START.match(lines[start]):
            indent = len(lines[start]) - len(lines[start].lstrip())
            end = start + 1
            while end < len(lines):
                text = lines[end]
                if text.strip() and len(text) - len(text.lstrip()) <= indent:
                    break
                end += 1
            while end > start + 1 and not lines[end - 1].strip():
                end -= 1
            if end > line:
                return LineRegion(start, end)
    return LineRegion(line, min(line + 1, len(lines)))


def selected_lines(selection: types.Range) -> LineRegion:
    end = selection.end.line
    if selection.end.character > 0 or end == selection.start.line:
        end += 1
    return LineRegion(selection.start.line, end)


def list_actions(
    uri: str,
    version: int,
    lines: Sequence[str],
    selection: types.Range,
    diagnostics: Sequence[types.Diagnostic],
) -> list[types.CodeAction | types.Command]:
    """Every Bastion action for this range; pure, no I/O."""
    actions: list[types.CodeAction | types.Command] = []

    def add(kind: ActionKind, title: str, region: LineRegion, **extra: Any) -> None:
        data = ActionData(
            action=kind,
            uri=uri,
            version=version,
            start=region.start,
            end=region.end,
            problem=extra.pop("problem", ""),
        )
        actions.append(
            types.CodeAction(title=title, kind=KINDS[kind], data=data.model_dump(), **extra)
        )

    for diagnostic in diagnostics:
        region = LineRegion(diagnostic.range.start.line, diagnostic.range.end.line + 1)
        problem = f"{diagnostic.source or 'linter'}: {diagnostic.message}"
        add(
            ActionKind.FIX_DIAGNOSTIC,
            f"Bastion: Fix '{diagnostic.message}'",
            region,
            problem=problem,
            diagnostics=[diagnostic],
            is_preferred=True,
        )
    has_selection = selection.start != selection.end
    around = (
        selected_lines(selection) if has_selection else enclosing_block(lines, selection.start.line)
    )
    add(ActionKind.FIX, TITLES[ActionKind.FIX], around)
    add(ActionKind.ADD_DOCSTRING, TITLES[ActionKind.ADD_DOCSTRING], around)
    add(ActionKind.GENERATE_TESTS, TITLES[ActionKind.GENERATE_TESTS], around)
    if has_selection:
        add(ActionKind.REFACTOR, TITLES[ActionKind.REFACTOR], around)
    explain = types.Command(
        title=TITLES[ActionKind.EXPLAIN],
        command="bastion.chat",
        arguments=[
            {
                "message": "/explain",
                "uri": uri,
                "selection": {
                    "start": {"line": around.start, "character": 0},
                    "end": {"line": around.end, "character": 0},
                },
            }
        ],
    )
    # A bare Command, not a CodeAction holding one: clients can tell it apart unambiguously.
    actions.append(explain)
    return actions


def read_data(action: types.CodeAction) -> ActionData:
    try:
        return ActionData.model_validate(action.data)
    except ValidationError as error:
        raise ActionRefused(
            f"this code action carries no Bastion data ({error.error_count()} errors)"
        ) from None


def generated_tests_path(path: Path, workspace_root: Path | None) -> tuple[Path, str]:
    """Where generated tests go, beside the project's test layout, and the module to import."""
    root = workspace_root or path.parent
    tests_dir = root / "tests" if (root / "tests").is_dir() else path.parent
    try:
        module = ".".join(path.relative_to(root).with_suffix("").parts)
    except ValueError:
        module = path.stem
    if path.suffix in {".js", ".ts", ".jsx", ".tsx"}:
        return tests_dir / f"{path.stem}.test{path.suffix}", module
    return tests_dir / f"test_{path.stem}{path.suffix}", module


async def resolve_action(
    action: types.CodeAction,
    data: ActionData,
    *,
    connection: ProxyConnection,
    lines: Sequence[str],
    path: Path,
    language: str,
    workspace_root: Path | None,
) -> types.CodeAction:
    """Ask the model for this action and attach a `WorkspaceEdit` of minimal edits."""
    region = LineRegion(data.start, min(data.end, len(lines)))
    target = Snippet(str(path), region.start, max(region.end - 1, region.start), region.text(lines))
    test_path, module = generated_tests_path(path, workspace_root)
    messages = build_action_messages(
        data.action, target, language=language, problem=data.problem, module=module
    )
    profile = await connection.profile()
    settings = connection.settings
    answer = ""
    async for delta in connection.client.stream_chat(
        messages,
        model=profile.model,
        max_tokens=max(settings.max_tokens, 512),
        temperature=settings.temperature,
        stop=[],
        feature=FEATURE,
    ):
        answer += delta
    code = extract_code(answer)
    if not code.strip():
        raise ActionRefused("the model gave no code for this action; try again or rephrase")
    if data.action is ActionKind.GENERATE_TESTS:
        action.edit = new_file_edit(test_path, code)
        return action
    edits = minimal_edits(lines, region, code)
    if not edits:
        raise ActionRefused("the model proposed no change to this code")
    action.edit = types.WorkspaceEdit(
        document_changes=[
            types.TextDocumentEdit(
                text_document=types.OptionalVersionedTextDocumentIdentifier(
                    uri=data.uri, version=data.version
                ),
                edits=list(edits),
            )
        ]
    )
    return action


def new_file_edit(path: Path, text: str) -> types.WorkspaceEdit:
    if path.exists():
        raise ActionRefused(f"{path} already exists; Bastion will not overwrite it")
    uri = path.as_uri()
    return types.WorkspaceEdit(
        document_changes=[
            types.CreateFile(uri=uri, options=types.CreateFileOptions(ignore_if_exists=False)),
            types.TextDocumentEdit(
                text_document=types.OptionalVersionedTextDocumentIdentifier(uri=uri, version=None),
                edits=[
                    types.TextEdit(
                        range=types.Range(
                            start=types.Position(line=0, character=0),
                            end=types.Position(line=0, character=0),
                        ),
                        new_text=text if text.endswith("\n") else text + "\n",
                    )
                ],
            ),
        ]
    )
