"""Busy polling: after I/O, the event loop polls for a while instead of going to sleep.

An idle loop sleeps in epoll_wait, and on a virtual machine a sleeping vCPU takes tens of
microseconds to wake when the answer it waits for arrives: on a sub-millisecond exchange with
the model server and the client, that is a good part of what the proxy adds. With a window
set (`busy_poll_us`), every read from a client and every write to one (after which its next
request comes) starts or extends a window during which the loop
keeps itself busy (one cheap callback per iteration, so epoll is asked with a zero timeout),
and the vCPU never halts. Past the window the loop sleeps as before.

The price is CPU: up to one core, for as long as requests keep arriving. Off by default. It
pays on dedicated cores with a fast model server (or a fast route, like `/tokenize`); on a host
where the proxy shares cores with other work, the spinning takes their time. HAProxy offers the
same trade (`busy-polling`) for the same reason.
"""

from __future__ import annotations

import asyncio
import time

MAX_WINDOW_US = 10_000


class BusyPoll:
    """Keeps `loop` polling for `window_us` microseconds after each `touch()`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, window_us: int) -> None:
        if not 0 < window_us <= MAX_WINDOW_US:
            raise ValueError(f"busy_poll_us must be 1 to {MAX_WINDOW_US}, not {window_us}")
        self._loop = loop
        self._window_s = window_us / 1e6
        self._until = 0.0
        self.polling = False

    def touch(self) -> None:
        """I/O happened: poll until a window from now."""
        self._until = time.monotonic() + self._window_s
        if not self.polling:
            self.polling = True
            self._loop.call_soon(self._poll)

    def _poll(self) -> None:
        if time.monotonic() < self._until:
            self._loop.call_soon(self._poll)  # a ready callback: the next epoll does not sleep
        else:
            self.polling = False
