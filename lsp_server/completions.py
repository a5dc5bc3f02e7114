"""Inline completion, as a list of small named steps.

usable document → typing-through cache → windows by token budget → prompt for the served model's
mode → stream, stopping early at a block boundary → post-process → remember what was shown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import TypedDict

from inference import (
    ModelError,
    PostContext,
    Snippet,
    build_chat_completion_messages,
    build_fim_prompt,
    fit_windows,
    postprocess,
    reached_block_boundary,
)
from inference.prompts import CHATML_STOPS, build_chatml_prefill_prompt

from .connection import ModelProfile, ProxyConnection
from .status import StatusReporter
from .typing_cache import TypingCache

log = logging.getLogger(__name__)

FEATURE = "completion"


@dataclass(frozen=True)
class CompletionInput:
    """One completion request, with the document as it is now."""

    uri: str
    path: str
    language_id: str
    text: str
    offset: int

    @property
    def prefix(self) -> str:
        return self.text[: self.offset]

    @property
    def suffix(self) -> str:
        return self.text[self.offset :]

    @property
    def line_and_column(self) -> tuple[int, int]:
        prefix = self.prefix
        return prefix.count("\n"), len(prefix) - (prefix.rfind("\n") + 1)


def unusable_document(request: CompletionInput, max_bytes: int) -> str | None:
    """Why this document gets no completion, or None when it is fine."""
    if "\x00" in request.text:
        return f"{request.path}: binary content, no completion"
    size = len(request.text.encode("utf-8", errors="replace"))
    if size > max_bytes:
        return f"{request.path}: {size} bytes is over maxDocumentBytes={max_bytes}, no completion"
    return None


class Sampling(TypedDict):
    model: str
    max_tokens: int
    temperature: float
    feature: str


@dataclass(frozen=True)
class ModelCall:
    """A started model stream, and how its text becomes the text inserted at the cursor."""

    stream: AsyncGenerator[str, None]
    to_insertion: Callable[[str], str] = lambda text: text


async def collect_until_boundary(call: ModelCall, context: PostContext) -> str:
    """Read deltas until the stream ends or a whole block is there; always close the stream."""
    collected = ""
    try:
        async for delta in call.stream:
            collected += delta
            if reached_block_boundary(call.to_insertion(collected), context):
                break
    finally:
        await call.stream.aclose()
    return call.to_insertion(collected)


class InlineCompleter:
    """The completion pipeline behind `textDocument/inlineCompletion` and its fallback."""

    def __init__(
        self,
        connection: Callable[[], ProxyConnection],
        cache: TypingCache,
        status: StatusReporter,
        log_line: Callable[[str], None],
        snippets: Callable[[CompletionInput], list[Snippet]] = lambda request: [],
    ) -> None:
        self._snippets = snippets
        self._connection = connection
        self._cache = cache
        self._status = status
        self._log_line = log_line

    async def complete(self, request: CompletionInput) -> str | None:
        connection = self._connection()
        settings = connection.settings
        if (reason := unusable_document(request, settings.max_document_bytes)) is not None:
            self._log_line(reason)
            return None
        prefix, suffix = request.prefix, request.suffix
        if (typed_through := self._cache.lookup(request.uri, prefix, suffix)) is not None:
            return typed_through
        try:
            async with asyncio.timeout(settings.request_timeout_s):
                profile = await connection.profile()
                text = await self._generate(connection, profile, request)
        except TimeoutError:
            self._status.failed(
                TimeoutError(f"no answer within requestTimeoutS={settings.request_timeout_s}")
            )
            return None
        except ModelError as error:
            self._status.failed(error)
            return None
        self._status.connected(model=profile.model, completion_mode=profile.mode_name)
        if text:
            self._cache.remember(request.uri, prefix, suffix, text)
        return text

    async def _generate(
        self, connection: ProxyConnection, profile: ModelProfile, request: CompletionInput
    ) -> str | None:
        settings = connection.settings
        snippets = self._snippets(request)
        snippet_tokens = sum(profile.counter.count(s.text) for s in snippets)
        # A pre-filled chat prompt holds the code twice: in the question and in the answer.
        shares = 2 if profile.mode.chat_format else 1
        budget = max(settings.context_budget_tokens - snippet_tokens, 256) // shares
        prefix, suffix = fit_windows(
            request.prefix, request.suffix, budget_tokens=budget, counter=profile.counter
        )
        context = PostContext.from_texts(request.prefix, request.suffix, request.language_id)
        call = self._call(connection, profile, request, prefix, suffix, snippets)
        raw = await collect_until_boundary(call, context)
        text = postprocess(raw, context)
        log.info(
            "completion %s: %d chars from the model, %d kept",
            request.path,
            len(raw),
            len(text or ""),
        )
        return text

    def _call(
        self,
        connection: ProxyConnection,
        profile: ModelProfile,
        request: CompletionInput,
        prefix: str,
        suffix: str,
        snippets: list[Snippet],
    ) -> ModelCall:
        """Start the stream the served model's mode calls for."""
        settings, client = connection.settings, connection.client
        sampling = Sampling(
            model=profile.model,
            max_tokens=settings.max_tokens,
            temperature=settings.temperature,
            feature=FEATURE,
        )
        template = profile.mode.template
        if template is not None:
            prompt = build_fim_prompt(
                template, prefix, suffix, filename=request.path, snippets=snippets
            )
            return ModelCall(client.stream_completion(prompt, stop=template.stop, **sampling))
        if profile.mode.chat_format == "chatml":
            prefill = build_chatml_prefill_prompt(
                prefix,
                suffix,
                filename=request.path,
                language=request.language_id,
                snippets=snippets,
            )
            stream = client.stream_completion(prefill.text, stop=CHATML_STOPS, **sampling)
            return ModelCall(stream, prefill.completion)
        messages = build_chat_completion_messages(
            prefix, suffix, filename=request.path, language=request.language_id, snippets=snippets
        )
        return ModelCall(client.stream_chat(messages, stop=[], **sampling))
