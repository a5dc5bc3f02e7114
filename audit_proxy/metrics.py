"""The proxy's metrics, served at `GET /metrics` in the Prometheus text exposition format.

Written here rather than with `prometheus_client`: the proxy needs two metric types, and an
observation must cost well under a microsecond on the request path (a dict update under a lock).
Every label value is a bounded enum: route templates (never a client's path), features, status
codes, error codes, policy rule names and role names (both from the operator's files). User
names, keys, models and prompt text never become labels.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable

from audit_proxy.asgi import Receive, Scope, Send, send_error
from audit_proxy.observe import Seen

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0,
)  # fmt: skip
AUDIT_WRITE_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    pairs = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        pairs.append(extra)
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


class Counter:
    """A monotonic count per combination of label values."""

    def __init__(self, name: str, help_: str, labels: tuple[str, ...] = ()) -> None:
        self.name = name
        self.help = help_
        self.label_names = labels
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, *labels: str) -> float:
        return self._values.get(labels, 0.0)

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        with self._lock:
            items = sorted(self._values.items())
        for labels, value in items:
            yield f"{self.name}{_labels(self.label_names, labels)} {_number(value)}"


class Histogram:
    """Observations counted into fixed buckets, per combination of label values."""

    def __init__(
        self, name: str, help_: str, buckets: tuple[float, ...], labels: tuple[str, ...] = ()
    ) -> None:
        self.name = name
        self.help = help_
        self.label_names = labels
        self.bounds = buckets
        # Per label values: one count per bucket plus one for +Inf, then the sum.
        self._series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}
        self._lock = threading.Lock()

    def observe(self, value: float, *labels: str) -> None:
        index = bisect.bisect_left(self.bounds, value)
        with self._lock:
            series = self._series.get(labels)
            if series is None:
                series = self._series[labels] = ([0] * (len(self.bounds) + 1), [0.0])
            series[0][index] += 1
            series[1][0] += value

    def count(self, *labels: str) -> int:
        series = self._series.get(labels)
        return sum(series[0]) if series else 0

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        with self._lock:
            items = sorted((k, (list(c), s[0])) for k, (c, s) in self._series.items())
        for labels, (counts, total) in items:
            running = 0
            for bound, count in zip((*self.bounds, float("inf")), counts, strict=True):
                running += count
                le = 'le="+Inf"' if bound == float("inf") else f'le="{bound!r}"'
                yield f"{self.name}_bucket{_labels(self.label_names, labels, le)} {running}"
            yield f"{self.name}_sum{_labels(self.label_names, labels)} {_number(total)}"
            yield f"{self.name}_count{_labels(self.label_names, labels)} {running}"


class ProxyMetrics:
    """Every metric the proxy exports."""

    def __init__(self) -> None:
        self.requests = Counter(
            "bastion_proxy_requests_total",
            "HTTP requests answered, by route template, feature and status.",
            ("route", "feature", "status"),
        )
        self.request_seconds = Histogram(
            "bastion_proxy_request_duration_seconds",
            "Time from request to the last byte of the answer, by route template.",
            LATENCY_BUCKETS_S,
            ("route",),
        )
        self.upstream_errors = Counter(
            "bastion_proxy_upstream_errors_total",
            "Requests the model server failed (unreachable, timed out, cut, key rejected).",
            ("code",),
        )
        self.audit_write_seconds = Histogram(
            "bastion_proxy_audit_write_duration_seconds",
            "Time to write an audit record durably, by record kind.",
            AUDIT_WRITE_BUCKETS_S,
            ("record",),
        )
        self.audit_filed = Counter(
            "bastion_proxy_audit_records_filed_total",
            "Audit records this proxy wrote that are now filed from the staging file into the "
            "database (the records written less these are the backlog).",
        )
        self.audit_filing_seconds = Histogram(
            "bastion_proxy_audit_filing_duration_seconds",
            "Time the event loop spent filing one slice of staged audit records.",
            AUDIT_WRITE_BUCKETS_S,
        )
        self.policy_hits = Counter(
            "bastion_proxy_policy_hits_total",
            "Policy findings, by rule and action.",
            ("rule", "action"),
        )
        self.rate_limited = Counter(
            "bastion_proxy_rate_limited_total",
            "Requests refused with 429, by role and the limit hit.",
            ("role", "limit"),
        )
        self.busy_poll_seconds = Counter(
            "bastion_proxy_busy_poll_seconds_total",
            "Time the event loop kept itself from sleeping between close requests "
            "(busy_poll_us), work done meanwhile included: at most the CPU polling spent.",
        )
        self.denied = Counter(
            "bastion_proxy_authorization_denials_total",
            "Requests refused with 403 by the role, by role and the permission missing.",
            ("role", "permission"),
        )

    def render(self) -> bytes:
        metrics = (
            self.requests,
            self.request_seconds,
            self.upstream_errors,
            self.audit_write_seconds,
            self.audit_filed,
            self.audit_filing_seconds,
            self.policy_hits,
            self.rate_limited,
            self.denied,
            self.busy_poll_seconds,
        )
        lines = [line for metric in metrics for line in metric.render()]
        return ("\n".join(lines) + "\n").encode()


# One set per process, like the model server's own metrics: layers observe it directly.
METRICS = ProxyMetrics()


class CountRequests:
    """An observer (`audit_proxy.observe`): counts every HTTP request by route template, feature
    and status, and times it."""

    def __init__(
        self,
        routes: frozenset[str],
        prefixes: tuple[str, ...],
        feature_of: Callable[[Scope], str],
        featured: frozenset[str],
        metrics: ProxyMetrics = METRICS,
    ) -> None:
        self.routes = routes
        self.prefixes = prefixes
        self.feature_of = feature_of
        self.featured = featured
        self.metrics = metrics

    def route_of(self, path: str) -> str:
        if path in self.routes:
            return path
        for prefix in self.prefixes:
            if path.startswith(prefix):
                return prefix + "*"
        return "other"

    def __call__(self, scope: Scope, seen: Seen) -> None:
        route = self.route_of(scope["path"])
        feature = self.feature_of(scope) if route in self.featured else "none"
        status = str(seen.status) if seen.status is not None else "none"
        self.metrics.requests.inc(route, feature, status)
        self.metrics.request_seconds.observe(seen.seconds, route)


class MetricsEndpoint:
    """`GET /metrics`: the exposition; put it behind authentication and `RequireAdmin`."""

    def __init__(self, metrics: ProxyMetrics = METRICS) -> None:
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "GET":
            await send_error(
                send, 405, "only GET /metrics", "invalid_request_error", "method_not_allowed"
            )
            return
        body = self.metrics.render()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", CONTENT_TYPE),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})
