"""The audit layer around a relay: when the outcome goes on the record, against what the client
has been sent by then."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from audit_proxy.asgi import Message, Receive, Scope, Send
from audit_proxy.audit import Audit
from audit_proxy.auth import PRINCIPAL
from audit_proxy.keys import Principal
from audit_proxy.store import AuditStore

ANSWER = b'{"choices":[{"message":{"content":"return 1"},"finish_reason":"stop"}]}'


def scope() -> Scope:
    return {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [(b"x-bastion-feature", b"chat")],
        "client": ("127.0.0.1", 5000),
        PRINCIPAL: Principal(name="alice", role="user"),
    }


async def request_body() -> Message:
    return {"type": "http.request", "body": b'{"model":"m","messages":[]}', "more_body": False}


def relay(
    headers: list[tuple[bytes, bytes]], chunks: list[bytes], go: asyncio.Event | None = None
) -> object:
    """An inner app that answers with `headers` and the body in `chunks` (the last ends it),
    once `go` is set."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        if go is not None:
            await go.wait()
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for i, chunk in enumerate(chunks):
            more = i < len(chunks) - 1
            await send({"type": "http.response.body", "body": chunk, "more_body": more})

    return app


async def run(
    store: AuditStore, app: object, audit: Audit | None = None
) -> list[tuple[Message, bool]]:
    """Every message the client was sent, with whether an outcome was on record by then."""
    sent: list[tuple[Message, bool]] = []

    async def client(message: Message) -> None:
        outcomes = store.outcomes()
        sent.append((message, bool(outcomes)))

    audit = audit or Audit(app, store)  # type: ignore[arg-type]
    await audit(scope(), request_body, client)
    return sent


async def test_a_sized_answer_goes_out_but_its_last_byte_before_the_outcome_is_recorded(
    tmp_path: Path,
) -> None:
    store = AuditStore(tmp_path / "audit.sqlite3")
    sized = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(ANSWER))]
    sent = await run(store, relay(sized, [ANSWER]))
    (start, _), (prefix, prefix_recorded), (end, end_recorded) = sent
    assert start["type"] == "http.response.start"
    # The client's own work on the answer overlaps the commit; it cannot hold all of it before.
    assert prefix == {"type": "http.response.body", "body": ANSWER[:-1], "more_body": True}
    assert not prefix_recorded
    assert end == {"type": "http.response.body", "body": ANSWER[-1:], "more_body": False}
    assert end_recorded
    (outcome,) = store.outcomes()
    assert outcome.bytes_out == len(ANSWER)
    assert outcome.sha256 == hashlib.sha256(ANSWER).hexdigest()
    assert outcome.finish_reason == "stop"
    store.close()


async def test_an_unsized_answer_ends_only_after_the_outcome_is_recorded(tmp_path: Path) -> None:
    store = AuditStore(tmp_path / "audit.sqlite3")
    # No content-length: the body is chunked on the wire, and its end is the last message.
    sent = await run(store, relay([(b"content-type", b"text/event-stream")], [b"data: 1\n\n", b""]))
    bodies = [(message["body"], recorded) for message, recorded in sent[1:]]
    assert bodies == [(b"data: 1\n\n", False), (b"", True)]
    store.close()


async def test_under_load_a_sized_answer_goes_out_whole_after_the_outcome(tmp_path: Path) -> None:
    """With another exchange in flight no core is idle to overlap with: one write, not two."""
    store = AuditStore(tmp_path / "audit.sqlite3")
    sized = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(ANSWER))]
    go = asyncio.Event()
    audit = Audit(relay(sized, [ANSWER], go), store)  # type: ignore[arg-type]
    both = asyncio.gather(run(store, None, audit), run(store, None, audit))
    await asyncio.sleep(0.05)
    assert audit.in_flight == 2
    go.set()
    for sent in await both:
        bodies = [message for message, _ in sent[1:]]
        assert bodies == [{"type": "http.response.body", "body": ANSWER, "more_body": False}]
    assert len(store.outcomes()) == 2
    store.close()
