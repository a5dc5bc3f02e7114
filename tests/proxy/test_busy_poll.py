"""Adaptive busy polling: where its windows open and close, and what it reports it spent."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from audit_proxy.busy_poll import BusyPoll
from audit_proxy.metrics import METRICS

MAX_US = 500


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def after(self, ms: float) -> Clock:
        self.now += ms / 1000
        return self


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def exchanges(
    poller: BusyPoll, clock: Clock, count: int, upstream_ms: float, client_ms: float
) -> None:
    """`count` exchanges: a request, its answer `upstream_ms` later, the next `client_ms` on."""
    for _ in range(count):
        poller.request_came()
        clock.after(upstream_ms)
        poller.response_ended()
        clock.after(client_ms)


def test_back_to_back_requests_open_both_windows_as_wide_as_their_gaps(
    loop: asyncio.AbstractEventLoop,
) -> None:
    clock = Clock()
    poller = BusyPoll(loop, MAX_US, clock)
    poller.request_came()
    assert poller.windows_s == [0.0, 0.0]
    assert not poller.polling, "the first request of a while polls for nothing"
    exchanges(poller, clock, 5, upstream_ms=0.3, client_ms=0.25)
    after_request, after_response = poller.windows_s
    assert 0.0003 <= after_request <= MAX_US / 1e6
    assert 0.00025 <= after_response <= MAX_US / 1e6
    assert poller.polling


def test_a_window_grows_no_wider_than_the_gaps_it_must_cover(
    loop: asyncio.AbstractEventLoop,
) -> None:
    clock = Clock()
    poller = BusyPoll(loop, MAX_US, clock)
    exchanges(poller, clock, 10, upstream_ms=0.08, client_ms=0.08)
    assert poller.windows_s == [0.0001, 0.0001]


def test_a_model_that_takes_its_time_closes_the_window_after_a_request_only(
    loop: asyncio.AbstractEventLoop,
) -> None:
    clock = Clock()
    poller = BusyPoll(loop, MAX_US, clock)
    exchanges(poller, clock, 5, upstream_ms=0.3, client_ms=0.25)
    exchanges(poller, clock, 5, upstream_ms=40, client_ms=0.25)
    after_request, after_response = poller.windows_s
    assert after_request == 0.0
    assert after_response >= 0.00025


def test_an_editors_pace_closes_both_windows_and_the_loop_sleeps(
    loop: asyncio.AbstractEventLoop,
) -> None:
    clock = Clock()
    poller = BusyPoll(loop, MAX_US, clock)
    exchanges(poller, clock, 5, upstream_ms=0.3, client_ms=0.25)
    exchanges(poller, clock, 5, upstream_ms=40, client_ms=300)
    poller.polling = False  # the loop never ran: its last window has ended
    poller.request_came()
    assert poller.windows_s == [0.0, 0.0]
    assert not poller.polling


def test_a_gap_past_the_maximum_halves_a_window_and_one_past_the_window_doubles_it(
    loop: asyncio.AbstractEventLoop,
) -> None:
    clock = Clock()
    poller = BusyPoll(loop, MAX_US, clock)
    exchanges(poller, clock, 5, upstream_ms=0.3, client_ms=0.25)
    after_request, after_response = poller.windows_s
    poller.request_came()
    clock.after(0.6)  # past the maximum
    poller.response_ended()
    assert poller.windows_s[0] == pytest.approx(after_request / 2)
    clock.after(0.1)  # within the window: it stays
    poller.request_came()
    assert poller.windows_s[1] == pytest.approx(after_response)
    clock.after(after_request * 1000 * 0.75)  # past the halved window: it doubles back
    poller.response_ended()
    assert poller.windows_s[0] == pytest.approx(after_request)


async def test_time_spent_polling_is_exported_and_the_loop_sleeps_after() -> None:
    poller = BusyPoll(asyncio.get_running_loop(), 4_000)
    poller.windows_s = [0.004, 0.004]  # the touch halves its own: no touch came for long
    before = METRICS.busy_poll_seconds.value()
    poller.request_came()
    assert poller.polling
    await asyncio.sleep(0.02)
    assert not poller.polling
    spent = METRICS.busy_poll_seconds.value() - before
    assert 0.002 <= spent < 0.015
    assert b"bastion_proxy_busy_poll_seconds_total " in METRICS.render()
