"""The policy layer (auth → policy → audit → gate → forward) and the gate that enforces blocks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from audit_proxy.asgi import (
    ASGIApp,
    Receive,
    Scope,
    Send,
    read_body_or_refuse,
    replay,
    send_error,
)
from audit_proxy.metrics import METRICS
from audit_proxy.policy.engine import Engine
from audit_proxy.policy.rules import Policy

log = logging.getLogger("bastion.proxy")

# Bodies above this size are scanned in a worker thread, so that the event loop (which the regex
# engine would hold for milliseconds per 100 KB) can switch to other requests in between.
_INLINE_LIMIT = 64 * 1024

# Scope keys: the evidence JSON for the audit record, and the rules that block the request.
POLICY_EVIDENCE = "bastion.policy.evidence"
POLICY_BLOCKED_BY = "bastion.policy.blocked_by"


class ApplyPolicy:
    """Rewrites the request body by the policy and leaves the evidence in the scope for audit."""

    def __init__(
        self, app: ASGIApp, policy: Policy, evidence_key: bytes | Callable[[], bytes] | None = None
    ) -> None:
        self.app = app
        self.engine = Engine(policy, evidence_key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body_or_refuse(receive, send)
        if body is None:
            return
        if len(body) > _INLINE_LIMIT:
            outcome = await asyncio.to_thread(self.engine.apply, body)
        else:
            outcome = self.engine.apply(body)
        scope[POLICY_EVIDENCE] = self.engine.evidence(outcome)
        for finding in outcome.findings:
            METRICS.policy_hits.inc(finding.rule, finding.action)
        if outcome.findings:
            log.info(
                "policy %s: %s %s: %s",
                self.engine.policy.version,
                scope["method"],
                scope["path"],
                ", ".join(sorted({f"{f.rule}:{f.action}" for f in outcome.findings})),
            )
        if outcome.blocked_by:
            scope[POLICY_BLOCKED_BY] = outcome.blocked_by
        if outcome.body is not body:
            scope["headers"] = [
                (k, str(len(outcome.body)).encode() if k == b"content-length" else v)
                for k, v in scope["headers"]
            ]
        await self.app(scope, replay(outcome.body, receive), send)


class EnforceBlock:
    """After the audit record is written: answer 403 for a blocked request, else pass it on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        blocked_by: list[str] | None = scope.get(POLICY_BLOCKED_BY)
        if not blocked_by:
            await self.app(scope, receive, send)
            return
        await send_error(
            send,
            403,
            f"blocked by policy rule {', '.join(blocked_by)}: the request holds content this "
            "deployment does not send to the model; remove it and retry",
            "policy_violation",
            f"policy_blocked:{blocked_by[0]}",
        )
