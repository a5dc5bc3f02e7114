"""What the server has in flight, for work that can wait for an idle event loop.

Filing staged audit records into SQLite (`audit_proxy.store`) runs on the event loop, and a
request that arrives while it runs waits for it. So filing goes in small slices, each at a moment
when no exchange is in flight, and waits (not for long) while one is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Activity:
    """The exchanges in flight on one event loop, and the callbacks waiting for there to be none."""

    def __init__(self) -> None:
        self.exchanges: set[asyncio.Task[None]] = set()
        self._when_idle: list[Callable[[], None]] = []

    @property
    def in_flight(self) -> int:
        return len(self.exchanges)

    def started(self, exchange: asyncio.Task[None]) -> None:
        """`exchange` runs until its task is done."""
        self.exchanges.add(exchange)
        exchange.add_done_callback(self._ended)

    def _ended(self, exchange: asyncio.Task[None]) -> None:
        self.exchanges.discard(exchange)
        if not self.exchanges and self._when_idle:
            waiting, self._when_idle = self._when_idle, []
            loop = asyncio.get_running_loop()
            for callback in waiting:
                loop.call_soon(callback)

    def when_idle(self, callback: Callable[[], None]) -> None:
        """Call `callback` on the loop once no exchange is in flight (soon, if none is now)."""
        if self.exchanges:
            self._when_idle.append(callback)
        else:
            asyncio.get_running_loop().call_soon(callback)
