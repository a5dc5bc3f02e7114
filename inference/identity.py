"""Which completion mode the served model gets: FIM with a family's template, or chat.

The served model is identified by its tokenizer: a family is chosen when every one of its FIM
markers is a single token. The model id is only a fallback for servers that cannot tokenize.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from .fim import FIM_TEMPLATES, FimTemplate

if TYPE_CHECKING:
    from .client import ModelClient

CHAT = "chat"
# `<|im_start|>` alone marks ChatML: llama.cpp splits SmolLM2's `<|im_end|>` (its EOS) when asked
# to tokenize it as text, so requiring both would miss real ChatML models.
CHATML_MARKERS = ("<|im_start|>",)
_NO_OVERRIDE = frozenset({"", "auto"})

# Name fallback, first match wins. CodeQwen1.5 uses the StarCoder markers, hence its place.
_NAME_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"codeqwen"), "starcoder"),
    (re.compile(r"qwen.*coder"), "qwen2.5-coder"),
    (re.compile(r"starcoder"), "starcoder"),
    (re.compile(r"deepseek[-_ ]?coder"), "deepseek-coder"),
    (re.compile(r"code[-_ ]?llama"), "codellama"),
    (re.compile(r"codestral"), "codestral"),
)


@dataclass(frozen=True)
class CompletionMode:
    """How to ask this model for a completion, and how we decided."""

    kind: Literal["fim", "chat"]
    template: FimTemplate | None
    source: Literal["setting", "tokenizer", "name", "default"]
    chat_format: Literal["chatml"] | None = None

    @property
    def name(self) -> str:
        if self.template is not None:
            return f"fim:{self.template.name}"
        return f"{CHAT}:{self.chat_format}-prefill" if self.chat_format else CHAT


def all_markers() -> tuple[str, ...]:
    """Every family's markers, each once, in registry order, then the ChatML markers."""
    seen: dict[str, None] = {}
    for template in FIM_TEMPLATES.values():
        for marker in template.markers():
            seen.setdefault(marker, None)
    for marker in CHATML_MARKERS:
        seen.setdefault(marker, None)
    return tuple(seen)


def _single_tokens(results: Mapping[str, Sequence[int]], markers: Sequence[str]) -> bool:
    return all(len(results.get(marker) or ()) == 1 for marker in markers)


def choose_mode(
    tokenize_results: Mapping[str, Sequence[int]] | None,
    model_id: str,
    override: str | None = None,
) -> CompletionMode:
    """Decide the mode from an override, the marker tokenizations, or the model id.

    `tokenize_results` maps each marker to its token ids (BOS/EOS already removed); None when
    the server cannot tokenize. Raises ValueError for an override that names no template.
    """
    wanted = (override or "").strip().lower()
    if wanted not in _NO_OVERRIDE:
        if wanted == CHAT:
            return CompletionMode("chat", None, "setting")
        template = FIM_TEMPLATES.get(wanted)
        if template is None:
            choices = ", ".join(["chat", *FIM_TEMPLATES])
            raise ValueError(f"Unknown FIM template {override!r}; use one of: {choices}, or auto.")
        return CompletionMode("fim", template, "setting")
    if tokenize_results is not None:
        for template in FIM_TEMPLATES.values():
            if _single_tokens(tokenize_results, template.markers()):
                return CompletionMode("fim", template, "tokenizer")
        if _single_tokens(tokenize_results, CHATML_MARKERS):
            return CompletionMode("chat", None, "tokenizer", chat_format="chatml")
        return CompletionMode("chat", None, "default")
    name = model_id.lower()
    for pattern, template_name in _NAME_PATTERNS:
        if pattern.search(name):
            return CompletionMode("fim", FIM_TEMPLATES[template_name], "name")
    return CompletionMode("chat", None, "default")


def _without_overhead(tokens: list[int], overhead: list[int]) -> list[int]:
    # Servers that always add BOS (llama-cpp-python) answer [BOS, id] for a lone marker.
    if overhead and tokens[: len(overhead)] == overhead:
        return tokens[len(overhead) :]
    return tokens


async def detect_completion_mode(
    client: ModelClient, model: str, override: str | None = None
) -> CompletionMode:
    """Ask the server's tokenizer which FIM family `model` belongs to (see `choose_mode`).

    Connection and authentication errors propagate: they say nothing about the model.
    """
    if (override or "").strip().lower() not in _NO_OVERRIDE:
        return choose_mode(None, model, override)
    overhead = await client.tokenize(model, "")
    if overhead is None:
        return choose_mode(None, model)
    markers = all_markers()
    answers = await asyncio.gather(*(client.tokenize(model, marker) for marker in markers))
    results: dict[str, Sequence[int]] = {
        marker: _without_overhead(tokens, overhead)
        for marker, tokens in zip(markers, answers, strict=True)
        if tokens is not None
    }
    return choose_mode(results, model)
