"""The access log: one readable line per request, with no secrets in it."""

from __future__ import annotations

import logging

from audit_proxy.asgi import Scope
from audit_proxy.auth import PRINCIPAL
from audit_proxy.forward import RELAY_REPORT, REQUEST_ID
from audit_proxy.observe import Seen

log = logging.getLogger("bastion.proxy.access")


def log_access(scope: Scope, seen: Seen) -> None:
    """Logs client, user, method, path, status, bytes, time and how the exchange ended."""
    if not log.isEnabledFor(logging.INFO):
        return
    principal = scope.get(PRINCIPAL)
    report = scope.get(RELAY_REPORT)
    client = scope.get("client")
    parts = [
        f"{client[0]}:{client[1]}" if client else "-",
        principal.name if principal is not None else "-",
        f'"{scope["method"]} {scope["path"]}"',
        str(seen.status or "-"),
        f"{seen.sent}B",
        f"{seen.seconds * 1000:.1f}ms",
    ]
    if scope.get(REQUEST_ID):
        parts.append(f"req={scope[REQUEST_ID]}")
    if report is not None and report.aborted_by:
        parts.append(f"aborted_by={report.aborted_by}")
    log.info(" ".join(parts))
