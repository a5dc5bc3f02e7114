"""ASGI types and the few response helpers every layer needs."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_REQUEST_BODY = 16 * 1024 * 1024

# A server extension (the proxy's own server sets it): `scope[ON_CLIENT_GONE](callback)` has
# `callback` called once if the client goes away before the exchange ends, and
# `scope[ON_CLIENT_GONE](None)` stops that. Without it, a layer learns of it from `receive`.
ON_CLIENT_GONE = "bastion.on_client_gone"
ClientGone = Callable[[Callable[[], None] | None], None]


class ClientDisconnected(Exception):
    """The client closed the connection before the request body arrived in full."""


class RequestTooLarge(Exception):
    """The request body is larger than the proxy accepts."""


def error_body(message: str, type_: str, code: str) -> bytes:
    """An OpenAI-style error document."""
    return json.dumps({"error": {"message": message, "type": type_, "code": code}}).encode()


async def send_json(
    send: Send,
    status: int,
    body: bytes,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Send a complete JSON response in one piece."""
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if extra_headers:
        headers.extend(extra_headers)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_error(
    send: Send,
    status: int,
    message: str,
    type_: str,
    code: str,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Send an OpenAI-style error response."""
    await send_json(send, status, error_body(message, type_, code), extra_headers)


async def read_body(receive: Receive, limit: int = MAX_REQUEST_BODY) -> bytes:
    """Read the whole request body; request bodies are prompts, small enough to hold."""
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientDisconnected
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    parts = [body]
    size = len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of a request header (name in lower case), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


def replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands out an already-read body, then defers to the real one."""
    pending = True

    async def receive_again() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return receive_again


async def read_body_or_refuse(receive: Receive, send: Send) -> bytes | None:
    """The request body, or None when the client left or a too-large body was refused (413)."""
    try:
        return await read_body(receive)
    except ClientDisconnected:
        return None
    except RequestTooLarge:
        await send_error(
            send, 413, "request body too large", "invalid_request_error", "request_too_large"
        )
        return None
