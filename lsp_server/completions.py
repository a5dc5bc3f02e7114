"""Inline completion, as a list of small named steps.

usable document → typing-through cache → windows by token budget → prompt for the served model's
mode → stream, stopping early at a block boundary → post-process → remember what was shown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

from inference import (
    ModelError,
    PostContext,
    build_chat_completion_messages,
    build_fim_prompt,
    fit_windows,
    postprocess,
    reached_block_boundary,
)

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


def unusable_document(request: CompletionInput, max_bytes: int) -> str | None:
    """Why this document gets no completion, or None when it is fine."""
    if "\x00" in request.text:
        return f"{request.path}: binary content, no completion"
    size = len(request.text.encode("utf-8", errors="replace"))
    if size > max_bytes:
        return f"{request.path}: {size} bytes is over maxDocumentBytes={max_bytes}, no completion"
    return None


async def collect_until_boundary(stream: AsyncGenerator[str, None], context: PostContext) -> str:
    """Read deltas until the stream ends or a whole block is there; always close the stream."""
    collected = ""
    try:
        async for delta in stream:
            collected += delta
            if reached_block_boundary(collected, context):
                break
    finally:
        await stream.aclose()
    return collected


class InlineCompleter:
    """The completion pipeline behind `textDocument/inlineCompletion` and its fallback."""

    def __init__(
        self,
        connection: Callable[[], ProxyConnection],
        cache: TypingCache,
        status: StatusReporter,
        log_line: Callable[[str], None],
    ) -> None:
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
        prefix, suffix = fit_windows(
            request.prefix,
            request.suffix,
            budget_tokens=settings.context_budget_tokens,
            counter=profile.counter,
        )
        context = PostContext.from_texts(request.prefix, request.suffix, request.language_id)
        stream = self._stream(connection, profile, request, prefix, suffix)
        raw = await collect_until_boundary(stream, context)
        text = postprocess(raw, context)
        log.info(
            "completion %s: %d chars from the model, %d kept",
            request.path,
            len(raw),
            len(text or ""),
        )
        return text

    def _stream(
        self,
        connection: ProxyConnection,
        profile: ModelProfile,
        request: CompletionInput,
        prefix: str,
        suffix: str,
    ) -> AsyncGenerator[str, None]:
        settings, client = connection.settings, connection.client
        template = profile.mode.template
        if template is not None:
            prompt = build_fim_prompt(template, prefix, suffix, filename=request.path, snippets=[])
            return client.stream_completion(
                prompt,
                model=profile.model,
                max_tokens=settings.max_tokens,
                temperature=settings.temperature,
                stop=list(template.stop),
                feature=FEATURE,
            )
        messages = build_chat_completion_messages(
            prefix, suffix, filename=request.path, language=request.language_id, snippets=[]
        )
        return client.stream_chat(
            messages,
            model=profile.model,
            max_tokens=settings.max_tokens,
            temperature=settings.temperature,
            stop=[],
            feature=FEATURE,
        )
