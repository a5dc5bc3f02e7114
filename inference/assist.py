"""Prompts for chat and code actions, and reading code back out of an answer.

Every prompt is built from a list of `Snippet`s, and the same list is what the answer cites:
what the user is shown as "the model saw this" is exactly what was sent.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from .types import ChatMessage, Snippet

SYSTEM_PROMPT = (
    "You are Bastion, a careful senior engineer helping inside the user's editor. Answer "
    "concisely. Put code in fenced code blocks. Never weaken security: if asked to disable "
    "authentication, TLS verification or input validation, or to log secrets, say plainly that "
    "you will not and offer a safe alternative."
)


class SlashCommand(StrEnum):
    EXPLAIN = "/explain"
    FIX = "/fix"
    TESTS = "/tests"
    DOC = "/doc"


SLASH_INSTRUCTIONS: dict[SlashCommand, str] = {
    SlashCommand.EXPLAIN: "Explain what this code does, step by step.",
    SlashCommand.FIX: "Find the bug in this code and give the corrected code.",
    SlashCommand.TESTS: "Write unit tests for this code.",
    SlashCommand.DOC: "Write documentation comments (docstrings) for this code.",
}


def expand_slash_command(message: str) -> str:
    """`/fix the loop` → the /fix instruction followed by the rest of the message."""
    head, _, rest = message.strip().partition(" ")
    for command, instruction in SLASH_INSTRUCTIONS.items():
        if head == command.value:
            return f"{instruction} {rest}".strip()
    return message.strip()


@dataclass(frozen=True)
class SecurityConcern:
    """A request that would weaken security, and what it is."""

    what: str

    def notice(self) -> str:
        return (
            f"Note: this asks to {self.what}, which weakens security. Bastion will not help "
            "do that silently; below is a safer way to reach the goal."
        )


_WEAKENING: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "disable TLS certificate verification",
        re.compile(
            r"(disable|turn off|skip|ignore|bypass|switch off)\W+(\w+\W+){0,4}"
            r"(tls|ssl|certificate|cert)\W*(verif|check|validation)?|verify\s*=\s*false",
            re.I,
        ),
    ),
    (
        "switch off an authentication or authorization check",
        re.compile(
            r"(disable|remove|turn off|skip|bypass|switch off|comment out)\W+(\w+\W+){0,4}"
            r"(auth\w*|login|permission|access control|csrf)\b",
            re.I,
        ),
    ),
    (
        "log or print a secret",
        re.compile(
            r"(log|print|dump|echo|write)\W+(\w+\W+){0,4}"
            r"(password|secret|api[ _-]?key|token|private key|credential)s?\b",
            re.I,
        ),
    ),
)


def security_concern(message: str) -> SecurityConcern | None:
    """The security-weakening intent of a request, if it has one."""
    for what, pattern in _WEAKENING:
        if pattern.search(message):
            return SecurityConcern(what)
    return None


def render_snippet(snippet: Snippet) -> str:
    lines = f"{snippet.start_line + 1}-{snippet.end_line + 1}"
    return f"File {snippet.path}, lines {lines}:\n```\n{snippet.text}\n```"


def build_chat_messages(
    message: str,
    snippets: Sequence[Snippet],
    history: Sequence[ChatMessage] = (),
    concern: SecurityConcern | None = None,
) -> list[ChatMessage]:
    """System prompt, earlier turns, then the context snippets and the user's request."""
    context = "\n\n".join(render_snippet(s) for s in snippets)
    request = expand_slash_command(message)
    if concern is not None:
        request += (
            f"\n\n(This request would {concern.what}. Explain the risk and give a safe "
            "alternative instead.)"
        )
    user = f"Context from the workspace:\n\n{context}\n\n{request}" if context else request
    return [
        ChatMessage(role="system", content=SYSTEM_PROMPT),
        *history,
        ChatMessage(role="user", content=user),
    ]


class ActionKind(StrEnum):
    FIX_DIAGNOSTIC = "fix_diagnostic"
    FIX = "fix"
    EXPLAIN = "explain"
    ADD_DOCSTRING = "add_docstring"
    GENERATE_TESTS = "generate_tests"
    REFACTOR = "refactor"


_ACTION_REQUESTS: dict[ActionKind, str] = {
    ActionKind.FIX_DIAGNOSTIC: (
        "A linter reports: {problem}\nRewrite the code below so that the problem is gone. Reply "
        "with the corrected code for exactly these lines in one code block, nothing else."
    ),
    ActionKind.FIX: (
        "Fix any bug in the code below. Reply with the corrected code for exactly these lines "
        "in one code block, nothing else."
    ),
    ActionKind.ADD_DOCSTRING: (
        "Add a docstring (or doc comment) to the code below, changing nothing else. Reply with "
        "the whole code, documented, in one code block."
    ),
    ActionKind.REFACTOR: (
        "Refactor the code below for clarity without changing its behaviour. Reply with the "
        "refactored code in one code block, nothing else."
    ),
    ActionKind.GENERATE_TESTS: (
        "Write unit tests ({framework}) for the code below, importing it from module "
        "`{module}`. Reply with the complete test file in one code block."
    ),
    ActionKind.EXPLAIN: "Explain what the code below does, briefly.",
}


def build_action_messages(
    kind: ActionKind,
    target: Snippet,
    *,
    language: str,
    problem: str = "",
    module: str = "",
    framework: str = "pytest",
) -> list[ChatMessage]:
    request = _ACTION_REQUESTS[kind].format(problem=problem, module=module, framework=framework)
    return [
        ChatMessage(role="system", content=SYSTEM_PROMPT),
        ChatMessage(
            role="user",
            content=f"{request}\n\n{render_snippet(target)}\n\nLanguage: {language}.",
        ),
    ]


_FENCE = re.compile(r"```[^\n`]*\n(.*?)(?:```|\Z)", re.S)


def extract_code(answer: str) -> str:
    """The first fenced code block of an answer, or the whole answer when it has none."""
    match = _FENCE.search(answer)
    code = match.group(1) if match else answer
    return code.strip("\n")
