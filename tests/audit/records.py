"""Writing audit records the way the audit layer does, for tests and benchmarks of either store."""

from __future__ import annotations

import asyncio
import hashlib
import time
from datetime import UTC, datetime

from audit_proxy.pg_store import PostgresAuditStore
from audit_proxy.store import AuditStore, TokenUsage

Store = AuditStore | PostgresAuditStore
PROMPT = b'{"prompt":"x"}'
ANSWER = b'{"choices":[{"text":"return 1","finish_reason":"stop"}]}'
USAGE = TokenUsage(prompt_tokens=1, completion_tokens=2, total_tokens=3)


async def record_request(
    store: Store, body: bytes = PROMPT, *, stream: bool = False, client: str | None = None
) -> str:
    """A completion request from alice, recorded before it would be forwarded."""
    return await store.record_request(
        user="alice",
        role="user",
        method="POST",
        route="/v1/completions",
        feature="completion",
        model="tiny",
        stream=stream,
        body=body,
        client=client,
    )


async def record_outcome(
    store: Store,
    request_id: str,
    answer: bytes = ANSWER,
    *,
    usage: TokenUsage | None = USAGE,
    latency_ms: float = 1.5,
    ttfb_ms: float | None = 1.0,
) -> None:
    """A complete, successful outcome whose client got `answer`."""
    await store.record_outcome(
        request_id,
        status=200,
        response_body=answer,
        sha256=hashlib.sha256(answer).hexdigest(),
        usage=usage,
        finish_reason="stop",
        latency_ms=latency_ms,
        ttfb_ms=ttfb_ms,
        aborted_by=None,
        completed=True,
    )


async def record_pair_async(store: Store, prompt: bytes = PROMPT, answer: bytes = ANSWER) -> str:
    """One request and its outcome; returns the request id."""
    request_id = await record_request(store, prompt)
    await record_outcome(store, request_id, answer)
    return request_id


def record_pair(store: Store, prompt: bytes = PROMPT, answer: bytes = ANSWER) -> str:
    return asyncio.run(record_pair_async(store, prompt, answer))


def a_moment_after_now() -> datetime:
    """A cutoff between records written before and after it, whatever the clock's grain."""
    time.sleep(0.002)
    cutoff = datetime.now(UTC)
    time.sleep(0.002)
    return cutoff
