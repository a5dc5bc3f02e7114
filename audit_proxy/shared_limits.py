"""Rate limits that hold across proxy replicas sharing one PostgreSQL audit log.

Each replica keeps its own token buckets (audit_proxy.ratelimit), so a request never waits for
the database to be counted. Every `every_s` a replica exchanges usage with the others through a
`UsageBoard`:

- it publishes, per bucket, the running total its own users have taken since it started;
- it reads the totals of the other replicas that changed since its last exchange, and charges
  the growth of each to its own bucket of the same user, role and limit (a total that shrank,
  because an estimate of tokens was settled lower, gives units back).

Running totals, not increments, make the exchange safe to lose or repeat: a missed exchange is
made up by the next one. Every replica thus sees all users' consumption at most one interval
late. With N replicas a user can exceed a limit by what the N replicas let through within one
interval before they hear of each other, instead of getting N times the limit.

What a replica's users took before another replica started is not charged to the newcomer: its
first exchange only learns the totals as they stand.

Cost (`benchmarks/shared_limits.py`, three replicas, every user changing both buckets between
exchanges): an exchange takes about 1.3 ms with 10 such users per replica, 5 ms with 100 and
50 ms with 1,000, mostly the database updating rows, in a thread off the request path. Past
that, exchanges run back to back and the interval stretches to their length: a very large
deployment should raise `rate_limit_sync_s`, which widens the overshoot window accordingly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from audit_proxy.ratelimit import BucketKey, BucketUsage, RateLimiter

log = logging.getLogger("bastion.proxy")

DEFAULT_SYNC_S = 0.25


class BoardUnavailable(Exception):
    """The shared board cannot be reached; limits stay local until it can."""


@dataclass(frozen=True)
class Exchange:
    """What one exchange brought back."""

    # Other replicas' totals that changed since `since`: (replica, usage).
    others: list[tuple[str, BucketUsage]]
    # The board had forgotten this replica (it was silent for too long): its rows are gone.
    forgotten: bool


class UsageBoard(Protocol):
    """Where replicas publish their running totals and read each other's."""

    def exchange(self, replica: str, mine: Sequence[BucketUsage], first: bool) -> Exchange:
        """Publish `mine`; return the others' totals (all of them when `first`, else those
        changed since the previous exchange). Raises `BoardUnavailable`."""
        ...

    def close(self) -> None: ...


class SharedLimits:
    """Keeps one process's `RateLimiter` in step with the other replicas' (see module doc)."""

    def __init__(self, limiter: RateLimiter, board: UsageBoard, every_s: float) -> None:
        self.limiter = limiter
        self.board = board
        self.every_s = every_s
        self.replica = uuid.uuid4().hex
        self.exchanges = 0
        # Buckets that moved here and are not on the board yet (an exchange failed, say).
        self._unpublished: dict[BucketKey, BucketUsage] = {}
        # Totals published before this replica's rows were forgotten are not published again.
        self._base: dict[BucketKey, float] = {}
        self._seen: dict[tuple[str, BucketKey], float] = {}
        self._failing = False
        self._exchanged_at: float | None = None
        self._task: asyncio.Task[None] | None = None

    def status(self) -> dict[str, object]:
        """For /healthz: whether the replicas' limits are in step, and how recently."""
        since = None if self._exchanged_at is None else time.monotonic() - self._exchanged_at
        return {
            "shared": self.exchanges > 0 and not self._failing,
            "exchanges": self.exchanges,
            "seconds_since_exchange": None if since is None else round(since, 3),
        }

    async def start(self) -> None:
        """Join the board, then exchange every `every_s`. Joining comes before the proxy takes
        requests: what other replicas' users take from then on is charged here."""
        await self.sync()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await asyncio.to_thread(self.board.close)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            await self.sync()

    async def sync(self) -> None:
        """One exchange: publish what changed here, charge what changed elsewhere."""
        mine = self._to_publish()
        first = self.exchanges == 0
        try:
            done = await asyncio.to_thread(self.board.exchange, self.replica, mine, first)
        except BoardUnavailable as exc:
            if not self._failing:
                log.warning("rate limits are per replica until the database is back: %s", exc)
                self._failing = True
            return
        if self._failing:
            log.info("rate limits are shared across replicas again")
            self._failing = False
        if done.forgotten:
            self._start_over()
            return
        self._unpublished.clear()
        for replica, usage in done.others:
            self._charge(replica, usage, first)
        self.exchanges += 1
        self._exchanged_at = time.monotonic()

    def _to_publish(self) -> list[BucketUsage]:
        for usage in self.limiter.changed_usage():
            base = self._base.get(usage.key, 0.0)
            self._unpublished[usage.key] = BucketUsage(
                usage.key, usage.taken - base, usage.per_minute, usage.capacity
            )
        return list(self._unpublished.values())

    def _charge(self, replica: str, usage: BucketUsage, first: bool) -> None:
        seen = (replica, usage.key)
        before = self._seen.get(seen)
        self._seen[seen] = usage.taken
        if before is None and first:
            return  # taken before this replica started
        units = usage.taken - (before or 0.0)
        if units:
            self.limiter.charge(usage, units)

    def _start_over(self) -> None:
        """The board dropped this replica's rows: come back as a new replica whose totals start
        at zero, so that nobody is charged twice for what it took before."""
        log.warning("the shared rate-limit board had forgotten this replica; rejoining")
        self.replica = uuid.uuid4().hex
        self._base = {usage.key: usage.taken for usage in self.limiter.usage()}
        self._unpublished.clear()
        self._seen.clear()
        self.exchanges = 0
