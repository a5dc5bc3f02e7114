"""Completion post-processing: a readable chain of small named filters.

Each filter is a pure function `(text, ctx) -> text | None`; None drops the candidate. The chain
is a plain list (`DEFAULT_FILTERS`) to read, reorder or extend, and every filter is tested alone.
`reached_block_boundary` applies the same rules to a stream in progress, to stop it early.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from .prompts import CURSOR

_TAB_WIDTH = 4
_SCAN_LIMIT = 20_000
_OPENERS = {"(": ")", "[": "]", "{": "}"}
_CLOSERS = {")": "(", "]": "[", "}": "{"}
_CLOSING_LINE = re.compile(r"^\s*(?:[)\]}]|end\b|fi\b|done\b|esac\b|endif\b|</)")
_CONTINUATION_LINE = re.compile(
    r"^\s*(?:else\b|elif\b|except\b|finally\b|catch\b|rescue\b|ensure\b)"
)
_HASH_COMMENT_LANGUAGES = frozenset(
    {
        "python",
        "shellscript",
        "bash",
        "sh",
        "zsh",
        "ruby",
        "perl",
        "r",
        "yaml",
        "toml",
        "dockerfile",
        "makefile",
        "cmake",
        "powershell",
        "elixir",
        "julia",
        "nim",
        "coffeescript",
    }
)
_NO_BRACKET_LANGUAGES = frozenset({"markdown", "mdx", "plaintext", "text", "restructuredtext"})
_MARKDOWN_LANGUAGES = frozenset({"markdown", "mdx"})


@dataclass(frozen=True)
class PostContext:
    """The document around the cursor, as the filters need it."""

    prefix: str
    suffix: str
    language_id: str = ""

    @classmethod
    def from_texts(cls, prefix: str, suffix: str, language_id: str = "") -> PostContext:
        return cls(prefix=prefix, suffix=suffix, language_id=language_id.lower())

    @property
    def line_prefix(self) -> str:
        """The current line's text before the cursor."""
        return self.prefix[self.prefix.rfind("\n") + 1 :]

    @property
    def line_suffix(self) -> str:
        """The rest of the current line after the cursor."""
        end = self.suffix.find("\n")
        return self.suffix if end == -1 else self.suffix[:end]

    @property
    def indentation(self) -> str:
        """The current line's leading whitespace."""
        line = self.line_prefix
        return line[: len(line) - len(line.lstrip(" \t"))]

    @property
    def mid_line(self) -> bool:
        """Whether there is text after the cursor on its line."""
        return bool(self.line_suffix.strip())


Filter = Callable[[str, PostContext], str | None]


def _indent_width(line: str) -> int:
    width = 0
    for char in line:
        if char == " ":
            width += 1
        elif char == "\t":
            width += _TAB_WIDTH
        else:
            break
    return width


def _next_suffix_lines(ctx: PostContext) -> list[str]:
    """The non-blank lines after the cursor's line, stripped."""
    return [line.strip() for line in ctx.suffix[:_SCAN_LIMIT].split("\n")[1:] if line.strip()]


# -- filters ----------------------------------------------------------------------------------


def strip_code_fences(text: str, ctx: PostContext) -> str | None:
    """Keep only the code of a fenced answer (chat models add fences despite being told not to)."""
    if ctx.language_id in _MARKDOWN_LANGUAGES:
        return text
    body = text.lstrip()
    if not body.startswith("```"):
        return text
    newline = body.find("\n")
    if newline == -1:
        return ""
    body = body[newline + 1 :]
    closing = re.search(r"^[ \t]*```", body, flags=re.MULTILINE)
    if closing is not None:
        body = body[: closing.start()]
    return body.removesuffix("\n")


def strip_echoed_prefix(text: str, ctx: PostContext) -> str | None:
    """Drop a repeat of the text before the cursor (chat models often rewrite the current line)."""
    text = text.replace(CURSOR, "")
    lines = ctx.prefix.split("\n")
    for count in (3, 2, 1):
        if len(lines) < count:
            continue
        echo = "\n".join(lines[-count:])
        if len(echo.strip()) < 3:
            continue
        if text.startswith(echo):
            return text[len(echo) :]
        # The same line, re-indented by the model.
        if count == 1 and text.lstrip(" \t").startswith(echo.lstrip(" \t")):
            return text.lstrip(" \t")[len(echo.lstrip(" \t")) :]
    indentation = ctx.line_prefix
    if indentation and not indentation.strip() and text.startswith(indentation):
        previous = next((line for line in reversed(lines[:-1]) if line.strip()), "")
        opens_block = previous.rstrip().endswith((":", "{", "(", "[", "=>", "->"))
        if not opens_block and _indent_width(indentation) >= _indent_width(previous):
            # The cursor already sits at the block's indentation; the model indented again.
            return text[len(indentation) :]
    return text


def single_line_when_mid_line(text: str, ctx: PostContext) -> str | None:
    """With code after the cursor on its line, complete that line only."""
    if ctx.mid_line:
        return text.split("\n", 1)[0]
    return text


def _repetition_start(lines: Sequence[str]) -> int | None:
    """Where a block of 1-8 lines starts that then repeats 3+ times in a row; lines to keep."""
    count = len(lines)
    for start in range(count):
        for period in range(1, 9):
            if start + 3 * period > count:
                break
            block = [line.rstrip() for line in lines[start : start + period]]
            if not any(block):
                continue
            repeats = 1
            while [
                line.rstrip()
                for line in lines[start + repeats * period : start + (repeats + 1) * period]
            ] == block:
                repeats += 1
            if repeats >= 3:
                return start + period
    return None


_REPEATED_TAIL = re.compile(r"(.{2,40}?)\1{5,}$")


def cut_repeated_lines(text: str, ctx: PostContext) -> str | None:
    """Cut a repetition loop: a line or block repeated 3+ times, or a line that ends in a loop."""
    lines = text.split("\n")
    keep = _repetition_start(lines)
    if keep is not None:
        lines = lines[:keep]
    elif not text.endswith("\n"):
        # An unfinished last line stuck repeating the same few characters (e.g. `a = a = a = `).
        match = _REPEATED_TAIL.search(lines[-1])
        if match is not None:
            lines[-1] = lines[-1][: match.start() + len(match.group(1))]
    return "\n".join(lines)


def _continues_statement(line: str) -> bool:
    if _CONTINUATION_LINE.match(line):
        return True
    return bool(_CLOSING_LINE.match(line)) and line.rstrip().endswith(("{", ":"))


def _scope_end(lines: Sequence[str], ctx: PostContext) -> int | None:
    """How many completion lines belong to the cursor's block; None when it goes on."""
    line_prefix = ctx.line_prefix
    if line_prefix.strip():
        base = _indent_width(line_prefix)
    else:
        base = _indent_width(line_prefix + lines[0]) if lines else _indent_width(line_prefix)
    went_deeper = False
    for index in range(1, len(lines)):
        line = lines[index]
        if not line.strip():
            continue
        width = _indent_width(line)
        if width > base:
            went_deeper = True
            continue
        if width == base and not went_deeper:
            continue  # another statement of the same block
        if width == base and _continues_statement(line):
            went_deeper = False  # `else:`, `} catch (e) {`: the same statement goes on
            continue
        if not _CLOSING_LINE.match(line):
            return index  # dedented below the cursor's block, or a new statement after a block
        # A line that closes the block: keep it, unless the suffix already has it.
        next_lines = _next_suffix_lines(ctx)
        return index if next_lines and next_lines[0] == line.strip() else index + 1
    return None


def stop_at_block_end(text: str, ctx: PostContext) -> str | None:
    """Stop where the cursor's block ends: a dedent below it, or a new statement after a block."""
    lines = text.split("\n")
    end = _scope_end(lines, ctx)
    if end is None:
        return text
    return "\n".join(lines[:end])


def trim_suffix_overlap(text: str, ctx: PostContext) -> str | None:
    """Drop the end of a completion that repeats what already follows the cursor."""
    lines = text.split("\n")
    next_lines = _next_suffix_lines(ctx)
    # Line 0 continues the cursor's line; it is a whole line only on an otherwise empty line.
    first = 0 if not ctx.line_prefix.strip() and not ctx.mid_line else 1
    for index in range(first, len(lines)):
        tail = [line.strip() for line in lines[index:] if line.strip()]
        if tail and tail == next_lines[: len(tail)]:
            text = "\n".join(lines[:index])
            break
    rest_of_line = ctx.line_suffix.strip()
    # Brackets-only overlaps are left to balance_brackets, which knows what they close.
    if rest_of_line and re.search(r"\w", rest_of_line):
        trimmed = text.rstrip()
        if trimmed.endswith(rest_of_line):
            text = trimmed[: len(trimmed) - len(rest_of_line)]
            if ctx.line_suffix[:1].isspace():
                text = text.rstrip(" \t")
    return text


def _brackets(text: str, language_id: str) -> Iterator[tuple[int, str]]:
    """Positions of the brackets in `text` that are code, not strings or comments."""
    hash_comments = language_id in _HASH_COMMENT_LANGUAGES
    single_quotes = language_id != "rust"  # Rust's lifetimes ('a) are not strings
    python = language_id == "python"
    index, length = 0, len(text)
    while index < length:
        char = text[index]
        if char in _OPENERS or char in _CLOSERS:
            yield index, char
        elif python and text.startswith(('"""', "'''"), index):
            end = text.find(text[index : index + 3], index + 3)
            index = length if end == -1 else end + 3
            continue
        elif char == '"' or char == "`" or (char == "'" and single_quotes):
            index += 1
            while index < length and text[index] != char:
                if text[index] == "\\":
                    index += 1
                elif text[index] == "\n" and char != "`":
                    break
                index += 1
        elif (char == "#" and hash_comments) or (
            not hash_comments and text.startswith("//", index)
        ):
            end = text.find("\n", index)
            index = length if end == -1 else end
            continue
        elif text.startswith("/*", index) and not hash_comments:
            end = text.find("*/", index + 2)
            index = length if end == -1 else end + 2
            continue
        index += 1


def _open_brackets(text: str, language_id: str) -> list[str]:
    stack: list[str] = []
    for _, char in _brackets(text, language_id):
        if char in _OPENERS:
            stack.append(char)
        elif stack and stack[-1] == _CLOSERS[char]:
            stack.pop()
    return stack


def _closed_by_suffix(suffix: str, outer: Sequence[str], language_id: str) -> int:
    """How many of the openers before the cursor the suffix closes, innermost first."""
    own: list[str] = []
    closed = 0
    for _, char in _brackets(suffix, language_id):
        if char in _OPENERS:
            own.append(char)
        elif own:
            if own[-1] != _CLOSERS[char]:
                break
            own.pop()
        elif closed < len(outer) and outer[len(outer) - 1 - closed] == _CLOSERS[char]:
            closed += 1
        else:
            break
    return closed


def _cut_at(text: str, position: int) -> str:
    kept = text[:position].rstrip(" \t")
    if kept.endswith("\n"):
        kept = kept.rstrip()
    return kept


def balance_brackets(text: str, ctx: PostContext) -> str | None:
    """Cut at a closing bracket that closes nothing the completion or the suffix leaves open."""
    language = ctx.language_id
    if language in _NO_BRACKET_LANGUAGES:
        return text
    outer = _open_brackets(ctx.prefix[-_SCAN_LIMIT:], language)
    may_close = len(outer) - _closed_by_suffix(ctx.suffix[:_SCAN_LIMIT], outer, language)
    own: list[str] = []
    for position, char in _brackets(text, language):
        if char in _OPENERS:
            own.append(char)
            continue
        if own:
            if own[-1] != _CLOSERS[char]:
                return _cut_at(text, position)
            own.pop()
            continue
        if may_close <= 0 or not outer or outer[-1] != _CLOSERS[char]:
            return _cut_at(text, position)
        outer = outer[:-1]
        may_close -= 1
    return text


def trim_trailing_whitespace(text: str, ctx: PostContext) -> str | None:
    """Drop trailing newlines and spaces, unless they separate the completion from the suffix."""
    stripped = text.rstrip()
    trailing = text[len(stripped) :]
    if "\n" in trailing or not ctx.mid_line:
        return stripped
    return text


def drop_blank(text: str, ctx: PostContext) -> str | None:
    """Nothing but whitespace is no completion."""
    return text if text.strip() else None


DEFAULT_FILTERS: list[Filter] = [
    strip_code_fences,
    strip_echoed_prefix,
    single_line_when_mid_line,
    cut_repeated_lines,
    stop_at_block_end,
    trim_suffix_overlap,
    balance_brackets,
    trim_trailing_whitespace,
    drop_blank,
]


def postprocess(
    text: str, ctx: PostContext, filters: Sequence[Filter] = DEFAULT_FILTERS
) -> str | None:
    """Run `text` through `filters` in order; None when one of them drops it."""
    for step in filters:
        result = step(text, ctx)
        if result is None:
            return None
        text = result
    return text


def reached_block_boundary(text_so_far: str, ctx: PostContext) -> bool:
    """Whether a stream in progress can stop: the line (mid-line) or the block is complete."""
    if ctx.mid_line and "\n" in text_so_far:
        return True
    lines = text_so_far.split("\n")
    end = _scope_end(lines, ctx)
    if end is not None and end < len(lines):
        return True
    complete = lines[:-1]
    return len(complete) >= 3 and _repetition_start(complete) is not None
