"""The outermost layer: one readable line per request, with no secrets in it."""

from __future__ import annotations

import logging
import time

from audit_proxy.asgi import ASGIApp, Message, Receive, Scope, Send
from audit_proxy.auth import PRINCIPAL
from audit_proxy.forward import RELAY_REPORT, REQUEST_ID

log = logging.getLogger("bastion.proxy.access")


class AccessLog:
    """Logs client, user, method, path, status, bytes, time and how the exchange ended."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        status = 0
        sent = 0

        async def logged_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, logged_send)
        finally:
            if log.isEnabledFor(logging.INFO):
                principal = scope.get(PRINCIPAL)
                report = scope.get(RELAY_REPORT)
                client = scope.get("client")
                parts = [
                    f"{client[0]}:{client[1]}" if client else "-",
                    principal.name if principal is not None else "-",
                    f'"{scope["method"]} {scope["path"]}"',
                    str(status or "-"),
                    f"{sent}B",
                    f"{(time.perf_counter() - started) * 1000:.1f}ms",
                ]
                if scope.get(REQUEST_ID):
                    parts.append(f"req={scope[REQUEST_ID]}")
                if report is not None and report.aborted_by:
                    parts.append(f"aborted_by={report.aborted_by}")
                log.info(" ".join(parts))
