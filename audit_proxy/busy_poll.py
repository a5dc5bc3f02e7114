"""Adaptive busy polling: when requests come close together, the event loop polls between them
instead of going to sleep.

An idle loop sleeps in epoll_wait, and on a virtual machine a sleeping vCPU takes tens of
microseconds to wake when the answer it waits for arrives, and wakes with colder caches: on a
sub-millisecond exchange with the model server and the client, that is a good part of what the
proxy adds. Linux's own answer for guests is the haltpoll cpuidle driver (poll up to 200 us
before halting, the window grown and shrunk by how soon wake-ups come), which this machine runs
with its window set to 0. The proxy does the same in its own loop, for itself.

Two moments start a window: a request comes in (the loop will next wait on the model server),
and a response ends (it will next wait on the client). Each has its own window, adapted by the
gap from such a touch to the next one, as haltpoll adapts its own:
- within the window: polling caught it; the window stays;
- longer than the window but within `max_us`: a wider one would have; it doubles (from
  GROW_START_US), up to `max_us`;
- longer than `max_us`: polling would only have burnt CPU; it halves, and under GROW_START_US
  it closes.
While a window is open the loop keeps one cheap callback ready, so epoll is asked with a zero
timeout and the vCPU never halts; past it the loop sleeps as before.

So the cost follows the traffic. An editor's requests, seconds apart, close the window after a
response; a model that takes tens of milliseconds closes the one after a request; a few touches
each, and then no polling at all. Back-to-back requests to a fast route keep both open: up to a
core while they last, for about 0.12 ms less added latency each on this 2-core VM, at some 13 %
more CPU a request (`benchmarks/busy_poll_cost.py`). Stream chunks do not touch, so many
concurrent streams do not keep a window open by themselves. The time spent polling is exported
(`bastion_proxy_busy_poll_seconds_total`). `busy_poll_us = 0` turns it off, for a host where the
proxy shares its cores with work that needs them; HAProxy's `busy-polling` is the same trade.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from audit_proxy.metrics import METRICS

MAX_WINDOW_US = 10_000
# The default longest window: one back-to-back client's turn between a response and its next
# request takes 0.25-0.3 ms here; haltpoll's 0.2 ms would miss most of them.
DEFAULT_MAX_US = 500
# Where a closed window starts when a gap says it should open (haltpoll's guest default).
GROW_START_US = 50
# The two windows: after a request came in (the loop next waits on the model server) and after
# a response ended (it next waits on the client).
_REQUEST, _RESPONSE = 0, 1


class BusyPoll:
    """Keeps `loop` polling after a request comes in and after a response ends, each for a
    window between 0 and `max_us` that follows how soon the next I/O came after the last such
    touch."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        max_us: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < max_us <= MAX_WINDOW_US:
            raise ValueError(
                f"busy_poll_us must be 1 to {MAX_WINDOW_US} (0 turns polling off), not {max_us}"
            )
        self._loop = loop
        self._clock = clock
        self._max_s = max_us / 1e6
        self._grow_start_s = min(GROW_START_US, max_us) / 1e6
        self.windows_s = [0.0, 0.0]  # after a request came in, after a response ended
        self._last = float("-inf")
        self._last_kind = _REQUEST
        self._until = 0.0
        self._since = 0.0
        self.polling = False

    def request_came(self) -> None:
        self._touch(_REQUEST)

    def response_ended(self) -> None:
        self._touch(_RESPONSE)

    def _touch(self, kind: int) -> None:
        now = self._clock()
        last = self._last_kind
        self.windows_s[last] = self._adapted(self.windows_s[last], now - self._last)
        self._last, self._last_kind = now, kind
        window = self.windows_s[kind]
        if not window:
            return
        self._until = max(self._until, now + window)
        if not self.polling:
            self.polling = True
            self._since = now
            self._loop.call_soon(self._poll)

    def _adapted(self, window: float, gap_s: float) -> float:
        """The window after `gap_s` from its touch to the next."""
        if gap_s <= window:
            return window
        if gap_s <= self._max_s:
            return min(max(window * 2, self._grow_start_s), self._max_s)
        half = window / 2
        return half if half >= self._grow_start_s else 0.0

    def _poll(self) -> None:
        now = self._clock()
        if now < self._until:
            self._loop.call_soon(self._poll)  # a ready callback: the next epoll does not sleep
            return
        self.polling = False
        METRICS.busy_poll_seconds.inc(amount=now - self._since)
