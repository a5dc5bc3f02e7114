"""Completion prompts: raw FIM prompts for code models, chat messages for the others.

Stable content comes first (other files' snippets, then the file's path, then the text before
the cursor), so consecutive keystrokes share a long prompt prefix and the model server's prefix
cache is reused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from .fim import FIM_TEMPLATES, FimTemplate
from .types import ChatMessage, Snippet

CURSOR = "<CURSOR>"

_HASH = ("# ", "")
_SLASHES = ("// ", "")
_DASHES = ("-- ", "")
_BLOCK_C = ("/* ", " */")
_HTML = ("<!-- ", " -->")
_COMMENT_BY_SUFFIX: dict[str, tuple[str, str]] = {
    **dict.fromkeys(
        (
            ".py",
            ".pyi",
            ".sh",
            ".bash",
            ".zsh",
            ".rb",
            ".pl",
            ".r",
            ".yaml",
            ".yml",
            ".toml",
            ".cfg",
            ".ini",
            ".ps1",
            ".jl",
            ".ex",
            ".exs",
            ".nim",
            ".cmake",
            ".mk",
            ".dockerfile",
            ".tf",
            ".conf",
        ),
        _HASH,
    ),
    **dict.fromkeys(
        (
            ".c",
            ".h",
            ".cc",
            ".cpp",
            ".cxx",
            ".hpp",
            ".hh",
            ".java",
            ".kt",
            ".kts",
            ".scala",
            ".js",
            ".jsx",
            ".mjs",
            ".cjs",
            ".ts",
            ".tsx",
            ".go",
            ".rs",
            ".swift",
            ".cs",
            ".dart",
            ".php",
            ".groovy",
            ".gradle",
            ".zig",
            ".proto",
            ".sol",
            ".v",
            ".m",
            ".mm",
            ".fs",
        ),
        _SLASHES,
    ),
    **dict.fromkeys((".sql", ".lua", ".hs", ".elm", ".ada", ".vhd", ".vhdl"), _DASHES),
    **dict.fromkeys((".css", ".scss", ".less"), _BLOCK_C),
    **dict.fromkeys((".html", ".htm", ".xml", ".vue", ".svelte", ".md", ".svg"), _HTML),
    ".lisp": ("; ", ""),
    ".clj": (";; ", ""),
    ".el": (";; ", ""),
    ".erl": ("% ", ""),
    ".tex": ("% ", ""),
    ".vim": ('" ', ""),
    ".bat": ("REM ", ""),
}
_COMMENT_BY_NAME: dict[str, tuple[str, str]] = {
    "makefile": _HASH,
    "dockerfile": _HASH,
    "cmakelists.txt": _HASH,
}


def comment_style(filename: str) -> tuple[str, str]:
    """The line-comment opener and closer for a file, by its name (`#` when unknown)."""
    path = PurePosixPath(filename.replace("\\", "/"))
    by_name = _COMMENT_BY_NAME.get(path.name.lower())
    if by_name is not None:
        return by_name
    return _COMMENT_BY_SUFFIX.get(path.suffix.lower(), _HASH)


def _commented(text: str, style: tuple[str, str]) -> str:
    opener, closer = style
    return "".join(f"{opener}{line}{closer}".rstrip() + "\n" for line in text.splitlines())


def _snippet_header(snippet: Snippet) -> str:
    return f"Path: {snippet.path} (lines {snippet.start_line}-{snippet.end_line})"


CHATML_SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")


def _prompt_markers() -> tuple[str, ...]:
    found: dict[str, None] = {}
    for template in FIM_TEMPLATES.values():
        for marker in (*template.markers(), template.file_sep, *template.stop):
            if marker.strip():
                found.setdefault(marker.strip(), None)
    for marker in CHATML_SPECIAL_TOKENS:
        found.setdefault(marker, None)
    return tuple(found)


PROMPT_MARKERS = _prompt_markers()


def neutralize_markers(text: str) -> str:
    """Break template markers that occur in the user's code, so code cannot open a new turn.

    A space after the first character keeps the text readable for the model while the tokenizer
    no longer sees the special token. (An invisible character would not do: the proxy strips it.)
    """
    for marker in PROMPT_MARKERS:
        if marker in text:
            text = text.replace(marker, f"{marker[0]} {marker[1:]}")
    return text


def _neutral(snippets: Sequence[Snippet]) -> list[Snippet]:
    return [Snippet(s.path, s.start_line, s.end_line, neutralize_markers(s.text)) for s in snippets]


def _with_newline(text: str) -> str:
    return text if text.endswith("\n") or not text else text + "\n"


def build_fim_prompt(
    template: FimTemplate,
    prefix: str,
    suffix: str,
    *,
    filename: str,
    snippets: Sequence[Snippet] = (),
) -> str:
    """The raw FIM prompt for `template`, with context snippets laid out before the prefix.

    Families with a file separator get the repository form they were trained on (one block per
    file, path first); the others get snippets as comments in the file's language.
    """
    prefix, suffix, snippets = (
        neutralize_markers(prefix),
        neutralize_markers(suffix),
        _neutral(snippets),
    )
    if template.file_sep:
        context = "".join(
            f"{template.file_sep}{snippet.path}\n{_with_newline(snippet.text)}"
            for snippet in snippets
        )
        if not context:
            return template.render(prefix, suffix)
        body = template.render(prefix, suffix)
        return f"{context}{template.file_sep}{filename}\n{body}"
    style = comment_style(filename)
    context = "".join(
        _commented(f"{_snippet_header(snippet)}\n{snippet.text}", style) for snippet in snippets
    )
    if context:
        context += _commented(f"Path: {filename}", style)
    return template.render(context + prefix, suffix)


COMPLETION_SYSTEM_PROMPT = (
    "You are a code completion engine inside an editor. The user shows a file with the marker "
    f"{CURSOR} at the cursor. Reply with ONLY the code to insert at {CURSOR}: no explanation, no "
    "markdown, no code fences, and do not repeat the code before or after the cursor. If nothing "
    "should be inserted, reply with nothing."
)


def build_chat_completion_messages(
    prefix: str,
    suffix: str,
    *,
    filename: str,
    language: str,
    snippets: Sequence[Snippet] = (),
) -> list[ChatMessage]:
    """Chat messages asking a model without FIM tokens for the code at the cursor."""
    prefix, suffix, snippets = (
        neutralize_markers(prefix),
        neutralize_markers(suffix),
        _neutral(snippets),
    )
    parts: list[str] = []
    for snippet in snippets:
        parts.append(f"{_snippet_header(snippet)}\n{_with_newline(snippet.text)}")
    if parts:
        parts.insert(0, "Context from other files:\n")
    label = f" ({language})" if language else ""
    parts.append(f"File: {filename}{label}\n{prefix}{CURSOR}{suffix}")
    parts.append(f"\nReply with only the code to insert at {CURSOR}.")
    return [
        ChatMessage(role="system", content=COMPLETION_SYSTEM_PROMPT),
        ChatMessage(role="user", content="\n".join(parts)),
    ]


CHATML_STOPS = ("```", *CHATML_SPECIAL_TOKENS)


@dataclass(frozen=True)
class PrefillPrompt:
    """A raw ChatML prompt whose assistant turn already holds the code up to the cursor."""

    text: str
    held_back: str

    def completion(self, generated: str) -> str:
        """What to insert at the cursor: drop the space the prompt held back, if restated."""
        if self.held_back and generated.startswith(self.held_back):
            return generated[len(self.held_back) :]
        return generated


def build_chatml_prefill_prompt(
    prefix: str,
    suffix: str,
    *,
    filename: str,
    language: str,
    snippets: Sequence[Snippet] = (),
) -> PrefillPrompt:
    """For chat models with ChatML tokens but no FIM tokens (SmolLM2, Qwen instruct).

    Small chat models answer a "complete this" question with prose; pre-filling their answer with
    an open code fence and the code before the cursor makes them continue the code instead.
    A space right before the cursor is held back: BPE tokenizers glue it to the next word
    (" return"), so a prompt ending in a space makes the model start oddly.
    """
    messages = build_chat_completion_messages(
        prefix, suffix, filename=filename, language=language, snippets=snippets
    )
    prefix = neutralize_markers(prefix)
    held_back = " " if prefix.endswith(" ") else ""
    stem = prefix[: len(prefix) - len(held_back)]
    fence = f"```{language}\n" if language else "```\n"
    turns = "".join(f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n" for m in messages)
    return PrefillPrompt(f"{turns}<|im_start|>assistant\n{fence}{stem}", held_back)
