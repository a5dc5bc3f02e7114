"""The innermost layer: relay one request to the model server and stream its answer back.

The user's key stops here; upstream sees only the proxy's service key. The client going away is
watched for the whole time (also while the model server has not answered yet): the upstream
response is then closed at once so the model stops generating.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from audit_proxy.asgi import (
    ON_CLIENT_GONE,
    ClientDisconnected,
    ClientGone,
    Receive,
    Scope,
    Send,
    header,
    read_body,
    send_error,
)
from audit_proxy.metrics import METRICS
from audit_proxy.store import AbortedBy
from audit_proxy.tls_files import load_ca_bundle
from audit_proxy.upstream_client import (
    UpstreamConnectTimeout,
    UpstreamDisconnected,
    UpstreamPool,
    UpstreamReadTimeout,
    UpstreamResponse,
    UpstreamTLSError,
    UpstreamUnreachable,
)

log = logging.getLogger("bastion.proxy")

RELAY_REPORT = "bastion.relay_report"
REQUEST_ID = "bastion.request_id"
SIZED_BODY_LIMIT = 1 << 20

# Headers that describe one hop, or that the proxy sets itself.
_DROPPED_RESPONSE_HEADERS = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"te",
        b"trailer",
        b"upgrade",
        b"proxy-authenticate",
        b"server",
        b"date",
    }
)


@dataclass
class RelayReport:
    """What the relay tells the layers around it about how the exchange ended."""

    aborted_by: AbortedBy | None = None
    upstream_status: int | None = None
    error: str | None = None
    started: bool = False  # the response to the client has begun


class StreamAborted(Exception):
    """The response had started and cannot be finished; the client connection must be cut."""


@dataclass
class _Watch:
    client_gone: bool = False
    done: bool = False
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    def client_left(self) -> None:
        """The client went away: stop the relay (and so the model server), unless it is done."""
        if not self.done and self.task is not None:
            self.client_gone = True
            self.task.cancel()


class Upstream:
    """The model server: a pool of keep-alive connections, and the ASGI endpoint relaying to it."""

    def __init__(
        self,
        url: str,
        api_key: SecretStr | None,
        connect_timeout_s: float,
        read_timeout_s: float,
        max_connections: int,
        ca_file: Path | None = None,
    ) -> None:
        self.url = url
        self._ca_file = ca_file
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._max_connections = max_connections
        self._service_key = (
            b"Bearer " + api_key.get_secret_value().encode("latin-1") if api_key else None
        )
        self._pool: UpstreamPool | None = None

    async def start(self) -> None:
        """Open the connection pool; needs the running event loop."""
        self._pool = UpstreamPool(
            self.url,
            upstream_tls_context(self._ca_file),
            self._connect_timeout_s,
            self._read_timeout_s,
            self._max_connections,
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        report: RelayReport = scope.setdefault(RELAY_REPORT, RelayReport())
        try:
            body = await read_body(receive)
        except ClientDisconnected:
            report.aborted_by = "client"
            report.error = "client closed the connection before sending its request"
            return
        task = asyncio.current_task()
        assert task is not None
        watch = _Watch(task=task)
        on_client_gone: ClientGone | None = scope.get(ON_CLIENT_GONE)
        watcher = None
        if on_client_gone is not None:
            on_client_gone(watch.client_left)
        else:
            watcher = asyncio.create_task(_watch_for_disconnect(receive, watch))
        try:
            await self._relay(scope, body, send, report, watch)
        except asyncio.CancelledError:
            if watch.client_gone and task.uncancel() == 0:
                report.aborted_by = "client"
                report.error = "client closed the connection"
                return
            raise
        finally:
            watch.done = True
            if on_client_gone is not None:
                on_client_gone(None)
            if watcher is not None:
                watcher.cancel()

    async def _relay(
        self, scope: Scope, body: bytes, send: Send, report: RelayReport, watch: _Watch
    ) -> None:
        if self._pool is None:
            raise RuntimeError("Upstream.start() was not awaited")
        target = scope["path"]
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        headers = [
            (b"content-type", header(scope, b"content-type") or b"application/json"),
            (b"accept", header(scope, b"accept") or b"*/*"),
            (b"accept-encoding", b"identity"),
        ]
        request_id = scope.get(REQUEST_ID)
        if request_id:
            headers.append((b"x-request-id", request_id.encode("ascii")))
        if self._service_key is not None:
            headers.append((b"authorization", self._service_key))
        try:
            resp = await self._pool.request(scope["method"], target, headers, body)
            try:
                await self._pass_on(resp, send, report, watch)
            finally:
                resp.release()
        except UpstreamConnectTimeout:
            await self._fail(
                send,
                report,
                "proxy",
                504,
                "upstream_timeout",
                f"the model server {self.url} did not accept a connection within "
                f"{self._connect_timeout_s:g} s",
            )
        except UpstreamReadTimeout:
            await self._fail(
                send,
                report,
                "proxy",
                504,
                "upstream_timeout",
                f"the model server {self.url} sent nothing for {self._read_timeout_s:g} s",
            )
        except UpstreamTLSError as exc:
            hint = (
                f"the certificate authority in upstream_ca_file ({self._ca_file}) does not "
                "vouch for it"
                if self._ca_file
                else "if it uses a private certificate authority, set upstream_ca_file to "
                "that CA's PEM bundle"
            )
            await self._fail(
                send,
                report,
                "upstream",
                502,
                "upstream_tls_failed",
                f"TLS with the model server {self.url} failed ({exc.reason}); {hint}",
            )
        except UpstreamUnreachable as exc:
            await self._fail(
                send,
                report,
                "upstream",
                502,
                "upstream_unreachable",
                f"cannot connect to the model server {self.url}: {exc.reason}; "
                "check that it runs and that upstream_url points at it",
            )
        except UpstreamDisconnected:
            await self._fail(
                send,
                report,
                "upstream",
                502,
                "upstream_disconnected",
                f"the model server {self.url} closed the connection before its answer was complete",
            )

    async def _pass_on(
        self, resp: UpstreamResponse, send: Send, report: RelayReport, watch: _Watch
    ) -> None:
        """Relay status, headers and body to the client (`report.started` once it has begun).

        Raises `UpstreamError` when the answer cannot be read to its end.
        """
        report.upstream_status = resp.status
        if resp.status in (401, 403):
            report.error = f"upstream answered {resp.status} to the service key"
            METRICS.upstream_errors.inc("upstream_auth_failed")
            await send_error(
                send,
                502,
                f"the model server {self.url} rejected the proxy's service key "
                f"(HTTP {resp.status}); the proxy's operator must set upstream_api_key "
                "(or BASTION_UPSTREAM_API_KEY) to the key the model server expects",
                "upstream_error",
                "upstream_auth_failed",
            )
            watch.done = True
            return
        response_headers = [
            (name.lower(), value)
            for name, value in resp.headers
            if name.lower() not in _DROPPED_RESPONSE_HEADERS
        ]
        length = resp.content_length
        # A sized answer is complete upstream already: relay it in one write.
        whole = await resp.read() if length is not None and length <= SIZED_BODY_LIMIT else None
        report.started = True
        await send({"type": "http.response.start", "status": resp.status,
                    "headers": response_headers})  # fmt: skip
        if whole is not None:
            await send({"type": "http.response.body", "body": whole, "more_body": False})
        else:
            async for chunk in resp.chunks():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        watch.done = True

    async def _fail(
        self,
        send: Send,
        report: RelayReport,
        aborted_by: AbortedBy,
        status: int,
        code: str,
        message: str,
    ) -> None:
        report.aborted_by = aborted_by
        report.error = message
        METRICS.upstream_errors.inc(code)
        if report.started:
            # Half a stream cannot be mended; cutting the connection tells the client it is short.
            raise StreamAborted(message)
        await send_error(send, status, message, "upstream_error", code)


def upstream_tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """Verification against the system trust store, plus the operator's CA bundle if given.

    Raises `TlsFileError` (naming `upstream_ca_file`) for an unreadable or malformed bundle.
    """
    context = ssl.create_default_context()
    if ca_file is not None:
        load_ca_bundle(context, "upstream_ca_file", ca_file)
    return context


async def _watch_for_disconnect(receive: Receive, watch: _Watch) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                watch.client_left()
                return
