"""The outermost layer: watches each response once and, when the exchange is over, hands what it
saw to every observer (the access log, the request metrics).

One watcher for all of them, not a layer each: every layer wraps `send` once more, and each
message of every response passed through each wrapper.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from audit_proxy.asgi import ASGIApp, Message, Receive, Scope, Send


@dataclass(slots=True)
class Seen:
    """What the client was sent: the status (None: no response began), bytes of body, and how
    long the exchange took."""

    status: int | None = None
    sent: int = 0
    seconds: float = 0.0


Observer = Callable[[Scope, Seen], None]


class Observe:
    """Runs `app`, then each observer with the scope and what the client was sent."""

    def __init__(self, app: ASGIApp, observers: Sequence[Observer]) -> None:
        self.app = app
        self.observers = tuple(observers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        seen = Seen()

        async def watched_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen.status = message["status"]
            else:
                seen.sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        finally:
            seen.seconds = time.perf_counter() - started
            for observer in self.observers:
                observer(scope, seen)
