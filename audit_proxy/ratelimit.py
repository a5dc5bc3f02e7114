"""Per-user token buckets for requests and model tokens per minute.

A bucket holds up to `burst` units and refills at `per_minute / 60` units a second. A request is
let through when the bucket holds what it asks for (or is full, for a request larger than the
whole bucket); it then takes its units, which may drive the bucket below zero. Model tokens are
taken up front as an estimate and settled with the usage the model server reports, so the
limit holds on what was actually used while no request waits for its own answer to be counted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

Limit = Literal["requests", "tokens"]
Clock = Callable[[], float]
BucketKey = tuple[str, str, Limit]  # user, role, limit


class TokenBucket:
    """One user's allowance of one kind; not thread-safe (the event loop owns it)."""

    def __init__(self, per_minute: float, burst: float, now: float) -> None:
        self.rate_per_s = per_minute / 60.0
        self.capacity = burst
        self.level = burst
        self.updated = now

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self.updated)
        self.level = min(self.capacity, self.level + elapsed * self.rate_per_s)
        self.updated = now

    def take(self, amount: float, now: float) -> float:
        """Take `amount` and return 0, or take nothing and return the seconds until it fits."""
        self._refill(now)
        need = min(amount, self.capacity)
        if self.level >= need:
            self.level -= amount
            return 0.0
        return (need - self.level) / self.rate_per_s

    def give_back(self, amount: float, now: float) -> None:
        """Correct an estimate: a positive `amount` returns units, a negative one takes more."""
        self._refill(now)
        self.level = min(self.capacity, self.level + amount)


@dataclass(frozen=True)
class BucketUsage:
    """What this process's users took from one bucket since it started, and the bucket's size:
    what replicas that share limits tell each other (see audit_proxy.shared_limits)."""

    key: BucketKey
    taken: float
    per_minute: float
    capacity: float


@dataclass(frozen=True)
class Refusal:
    """Which limit a request ran into and when to retry."""

    limit: Limit
    retry_after_s: float

    @property
    def retry_after_header(self) -> str:
        """Whole seconds, rounded up, at least 1 (HTTP `Retry-After` has no fractions)."""
        return str(max(1, math.ceil(self.retry_after_s)))


class RateLimiter:
    """Token buckets keyed by (user, role, limit); the role sets their size and rate."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[BucketKey, TokenBucket] = {}
        # Units taken here per bucket since start, estimates settled: a running total only grows
        # by what this process let through, so replicas can exchange it safely.
        self._taken: dict[BucketKey, float] = {}
        self._changed: set[BucketKey] = set()  # totals moved since `changed_usage` last asked

    def _bucket(
        self, user: str, role: str, limit: Limit, per_minute: float, burst: float | None
    ) -> TokenBucket:
        key = (user, role, limit)
        bucket = self._buckets.get(key)
        if bucket is None:
            size = burst if burst is not None else max(1.0, per_minute)
            bucket = self._buckets[key] = TokenBucket(per_minute, size, self._clock())
        return bucket

    def take(
        self,
        user: str,
        role: str,
        limit: Limit,
        per_minute: float,
        burst: float | None,
        amount: float,
    ) -> Refusal | None:
        """Take `amount` from the user's bucket, or say how long to wait."""
        bucket = self._bucket(user, role, limit, per_minute, burst)
        wait_s = bucket.take(amount, self._clock())
        if wait_s > 0:
            return Refusal(limit, wait_s)
        key = (user, role, limit)
        self._taken[key] = self._taken.get(key, 0.0) + amount
        self._changed.add(key)
        return None

    def settle(self, user: str, role: str, limit: Limit, estimated: float, actual: float) -> None:
        """Replace an estimate taken earlier by the actual amount."""
        key = (user, role, limit)
        bucket = self._buckets.get(key)
        if bucket is not None and actual != estimated:
            bucket.give_back(estimated - actual, self._clock())
            self._taken[key] = self._taken.get(key, 0.0) + actual - estimated
            self._changed.add(key)

    def usage(self) -> list[BucketUsage]:
        """Every bucket this process took from, with its running total."""
        return self._usage_of(self._taken)

    def changed_usage(self) -> list[BucketUsage]:
        """The buckets whose running total moved since the last call."""
        changed, self._changed = self._changed, set()
        return self._usage_of(changed)

    def _usage_of(self, keys: Iterable[BucketKey]) -> list[BucketUsage]:
        return [
            BucketUsage(key, self._taken[key], bucket.rate_per_s * 60.0, bucket.capacity)
            for key in keys
            if (bucket := self._buckets.get(key)) is not None
        ]

    def charge(self, usage: BucketUsage, units: float) -> None:
        """Units another replica's users took (negative: gave back) from the same bucket."""
        user, role, limit = usage.key
        bucket = self._bucket(user, role, limit, usage.per_minute, usage.capacity)
        bucket.give_back(-units, self._clock())
