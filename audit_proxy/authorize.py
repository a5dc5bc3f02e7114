"""The authorization layer: the user's role decides what a request may do, and how often.

Order on a model-bound route: auth → **authorize** → (FIM suffix) → policy → audit → forward; a
request the role refuses goes auth → authorize → policy → audit → `AnswerDenial` instead, so that
nothing of it reaches the model server (not even a tokenizer lookup).

- Requests per minute are checked first, on every request, so that a flood of forbidden requests
  is bounded too; a 429 is answered at once and is not written to the audit log (the metrics and
  the access log count it), so that a client cannot flood the log through refusals.
- A request the role does not permit (feature, model, max_tokens, undefined role) is marked here
  answered 403 by `AnswerDenial` after the audit layer has recorded it (redacted, like every
  request), so that the denial and its reason are on the signed record.
- Tokens per minute are taken up front as an estimate (max_tokens x n plus a quarter of the
  prompt's bytes) and settled with the `total_tokens` the model server reports.

A refused request never reaches the model server.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from audit_proxy.asgi import (
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    read_body_or_refuse,
    replay,
    send_error,
)
from audit_proxy.audit import TOKENIZE_ROUTES, feature_of
from audit_proxy.auth import PRINCIPAL
from audit_proxy.keys import Principal
from audit_proxy.metrics import METRICS, ProxyMetrics
from audit_proxy.ratelimit import RateLimiter, Refusal
from audit_proxy.roles import Role, RoleBook

# Scope key: the `Denial` that `AnswerDenial` answers once the request is on record.
AUTHZ_DENIAL = "bastion.authz.denial"

# When a request names no max_tokens (and the role sets no limit) the estimate assumes this many.
DEFAULT_COMPLETION_ESTIMATE = 256
# Code and prose run about four bytes a token; the estimate is corrected by the reported usage.
BYTES_PER_TOKEN = 4
_LIMIT_FIELDS = ("max_tokens", "max_completion_tokens")
_GENERATING_ROUTES = frozenset({"/v1/completions", "/v1/chat/completions"})
# The key only matches the API's own `usage` object: inside generated text a quote is escaped.
_TOTAL_TOKENS = re.compile(rb'"total_tokens"\s*:\s*(\d+)')
_TAIL = 64


@dataclass(frozen=True)
class Denial:
    """Why a request is refused: the permission it lacks and the message for the client."""

    permission: str
    message: str
    status: int = 403

    async def send(self, send: Send) -> None:
        type_ = "permission_error" if self.status == 403 else "invalid_request_error"
        await send_error(send, self.status, self.message, type_, f"forbidden:{self.permission}")


def check(role_name: str, role: Role, feature: str, doc: dict[str, Any] | None) -> Denial | None:
    """The first permission the request lacks, or None; `doc` is the parsed body when needed."""
    if feature not in role.features:
        return Denial("feature", f"role {role_name!r} does not allow feature {feature!r}")
    if doc is None:
        return None
    if not role.any_model:
        model = doc.get("model")
        if not isinstance(model, str):
            return Denial(
                "model",
                f"role {role_name!r} allows only the models {', '.join(role.models)}; "
                "name one of them in the request's 'model'",
            )
        if not role.allows_model(model):
            return Denial("model", f"role {role_name!r} does not allow model {model!r}")
    if role.max_tokens is not None:
        for name in _LIMIT_FIELDS:
            value = doc.get(name)
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool):
                return Denial("max_tokens", f"{name} must be a whole number", status=400)
            if value > role.max_tokens:
                return Denial(
                    "max_tokens",
                    f"{name} {value} exceeds the role's limit {role.max_tokens} "
                    f"(role {role_name!r}); ask for at most {role.max_tokens}",
                )
    return None


def _parse(body: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def token_estimate(doc: dict[str, Any], body_size: int) -> int:
    """Tokens a request may use: what it may generate (x n choices) plus its prompt."""
    limits = [doc.get(name) for name in _LIMIT_FIELDS]
    asked = [v for v in limits if isinstance(v, int) and not isinstance(v, bool)]
    generate = min(asked) if asked else DEFAULT_COMPLETION_ESTIMATE
    n = doc.get("n")
    choices = n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1
    return max(0, generate) * choices + body_size // BYTES_PER_TOKEN


def _with_max_tokens(scope: Scope, doc: dict[str, Any], body: bytes, limit: int) -> bytes:
    """The body with `max_tokens` set to the role's limit when the request names none.

    Without it the model server may generate to the end of the model's context.
    """
    if any(doc.get(name) is not None for name in _LIMIT_FIELDS):
        return body
    doc["max_tokens"] = limit
    body = json.dumps(doc).encode()
    scope["headers"] = [
        (k, str(len(body)).encode() if k == b"content-length" else v) for k, v in scope["headers"]
    ]
    return body


class _UsageSniffer:
    """Finds the reported `total_tokens` in the answer as it streams past, keeping 64 bytes."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.total_tokens: int | None = None
        self._tail = b""

    def wrap(self, send: Send) -> Send:
        async def sniffing_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.status = message["status"]
            elif message["type"] == "http.response.body":
                chunk: bytes = message.get("body", b"")
                if chunk:
                    data = self._tail + chunk
                    if b"total_tokens" in data:
                        for match in _TOTAL_TOKENS.finditer(data):
                            self.total_tokens = int(match.group(1))
                    self._tail = data[-_TAIL:]
            await send(message)

        return sniffing_send

    def used(self, estimate: int) -> int:
        if self.total_tokens is not None:
            return self.total_tokens
        if self.status is None or self.status >= 400:
            return 0  # nothing was generated
        return estimate  # no usage reported (a stream without include_usage): keep the estimate


class Authorize:
    """Checks the request against the user's role; see the module docstring for the order."""

    def __init__(
        self,
        app: ASGIApp,
        denied: ASGIApp,
        roles: RoleBook,
        limiter: RateLimiter,
        metrics: ProxyMetrics = METRICS,
    ) -> None:
        """`app` serves permitted requests; `denied` records a refused one and answers it."""
        self.app = app
        self.denied = denied
        self.roles = roles
        self.limiter = limiter
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal: Principal = scope[PRINCIPAL]
        role_name = self.roles.role_of(principal)
        if role_name != principal.role:
            # The audit record and the access log carry the role that decided.
            principal = Principal(name=principal.name, role=role_name)
            scope[PRINCIPAL] = principal
        role = self.roles.get(role_name)
        if role is None:
            undefined = Denial(
                "role",
                f"role {role_name!r} is not defined in {self.roles.source}; ask an admin to "
                f"define it or to map {principal.name!r} to a defined role",
            )
            await self._deny(scope, receive, send, role_name, undefined)
            return
        if role.requests_per_minute is not None:
            refusal = self.limiter.take(
                principal.name,
                role_name,
                "requests",
                role.requests_per_minute,
                role.request_burst,
                1,
            )
            if refusal is not None:
                await self._refuse(send, role_name, role, refusal)
                return
        feature = feature_of(scope)
        metered = role.tokens_per_minute is not None and scope["path"] not in TOKENIZE_ROUTES
        if role.any_model and role.max_tokens is None and not metered:
            # Nothing in the body matters to this role: it is not read here.
            denial = check(role_name, role, feature, None)
            if denial is not None:
                await self._deny(scope, receive, send, role_name, denial)
            else:
                await self.app(scope, receive, send)
            return
        body = await read_body_or_refuse(receive, send)
        if body is None:
            return
        doc = _parse(body)
        if doc is None:
            not_json = check(role_name, role, feature, None) or Denial(
                "body", "the request body must be a JSON object", status=400
            )
            await self._deny(scope, replay(body, receive), send, role_name, not_json)
            return
        denial = check(role_name, role, feature, doc)
        if denial is not None:
            await self._deny(scope, replay(body, receive), send, role_name, denial)
            return
        if role.max_tokens is not None and scope["path"] in _GENERATING_ROUTES:
            body = _with_max_tokens(scope, doc, body, role.max_tokens)
        if metered and role.tokens_per_minute is not None:
            await self._metered(
                scope,
                replay(body, receive),
                send,
                principal.name,
                role_name,
                role,
                token_estimate(doc, len(body)),
            )
        else:
            await self.app(scope, replay(body, receive), send)

    async def _metered(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        user: str,
        role_name: str,
        role: Role,
        estimate: int,
    ) -> None:
        """Take the estimate from the user's token bucket, forward, and settle with the usage."""
        assert role.tokens_per_minute is not None
        refusal = self.limiter.take(
            user, role_name, "tokens", role.tokens_per_minute, role.token_burst, estimate
        )
        if refusal is not None:
            await self._refuse(send, role_name, role, refusal)
            return
        sniffer = _UsageSniffer()
        try:
            await self.app(scope, receive, sniffer.wrap(send))
        finally:
            self.limiter.settle(user, role_name, "tokens", estimate, sniffer.used(estimate))

    async def _deny(
        self, scope: Scope, receive: Receive, send: Send, role_name: str, denial: Denial
    ) -> None:
        """Hand the request to the denial chain: it is recorded, then answered."""
        self.metrics.denied.inc(role_name, denial.permission)
        scope[AUTHZ_DENIAL] = denial
        await self.denied(scope, receive, send)

    async def _refuse(self, send: Send, role_name: str, role: Role, refusal: Refusal) -> None:
        self.metrics.rate_limited.inc(role_name, refusal.limit)
        if refusal.limit == "requests":
            rate = f"{role.requests_per_minute:g} requests per minute"
        else:
            rate = f"{role.tokens_per_minute:g} tokens per minute"
        await send_error(
            send,
            429,
            f"rate limit: role {role_name!r} allows {rate}; retry in {refusal.retry_after_s:.1f} s",
            "rate_limit_error",
            f"{refusal.limit}_per_minute_exceeded",
            [(b"retry-after", refusal.retry_after_header.encode())],
        )


class AnswerDenial:
    """The end of the denial chain (policy → audit → here): answers the `Denial` in the scope."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        denial: Denial = scope[AUTHZ_DENIAL]
        await denial.send(send)


class RequireAdmin:
    """The admin routes (`/v1/audit/*`, `/metrics`): only for a role with `admin = true`."""

    def __init__(self, app: ASGIApp, roles: RoleBook, metrics: ProxyMetrics = METRICS) -> None:
        self.app = app
        self.roles = roles
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal: Principal = scope[PRINCIPAL]
        role_name = self.roles.role_of(principal)
        role = self.roles.get(role_name)
        if role is None or not role.admin:
            self.metrics.denied.inc(role_name, "admin")
            await send_error(
                send,
                403,
                f"{scope['path']} needs a role with admin = true; {principal.name!r} has role "
                f"{role_name!r}",
                "permission_error",
                "forbidden:admin",
            )
            return
        if role_name != principal.role:
            scope[PRINCIPAL] = Principal(name=principal.name, role=role_name)
        await self.app(scope, receive, send)
