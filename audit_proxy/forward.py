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

import aiohttp
from pydantic import SecretStr

from audit_proxy.asgi import ClientDisconnected, Receive, Scope, Send, header, read_body, send_error
from audit_proxy.metrics import METRICS
from audit_proxy.store import AbortedBy

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


class StreamAborted(Exception):
    """The response had started and cannot be finished; the client connection must be cut."""


@dataclass
class _Watch:
    client_gone: bool = False
    done: bool = False
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class Upstream:
    """The model server: a pooled aiohttp session and the ASGI endpoint that relays to it."""

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
        self._api_key = api_key
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout_s, sock_read=read_timeout_s
        )
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the connection pool; needs the running event loop."""
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            ttl_dns_cache=300,
            keepalive_timeout=30,
            ssl=upstream_tls_context(self._ca_file),
        )
        # No decompression: the bytes the client gets, and that are hashed, are the server's.
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

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
            watcher.cancel()

    async def _relay(
        self, scope: Scope, body: bytes, send: Send, report: RelayReport, watch: _Watch
    ) -> None:
        if self._session is None:
            raise RuntimeError("Upstream.start() was not awaited")
        target = self.url + scope["path"]
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        headers = {
            "Content-Type": (header(scope, b"content-type") or b"application/json").decode(),
            "Accept": (header(scope, b"accept") or b"*/*").decode(),
            "Accept-Encoding": "identity",
        }
        request_id = scope.get(REQUEST_ID)
        if request_id:
            headers["X-Request-Id"] = request_id
        if self._api_key is not None:
            headers["Authorization"] = f"Bearer {self._api_key.get_secret_value()}"
        started = False
        try:
            async with self._session.request(
                scope["method"], target, data=body or None, headers=headers
            ) as resp:
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
                    for name, value in resp.raw_headers
                    if name.lower() not in _DROPPED_RESPONSE_HEADERS
                ]
                length = resp.content_length
                if length is not None and length <= SIZED_BODY_LIMIT:
                    # A sized answer is complete upstream already: relay it in one write.
                    payload = await resp.read()
                    started = True
                    await send(
                        {
                            "type": "http.response.start",
                            "status": resp.status,
                            "headers": response_headers,
                        }
                    )
                    await send({"type": "http.response.body", "body": payload, "more_body": False})
                    watch.done = True
                    return
                started = True
                await send(
                    {
                        "type": "http.response.start",
                        "status": resp.status,
                        "headers": response_headers,
                    }
                )
                async for chunk in resp.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                watch.done = True
        except aiohttp.ConnectionTimeoutError:
            await self._fail(
                send,
                report,
                started,
                "proxy",
                504,
                "upstream_timeout",
                f"the model server {self.url} did not accept a connection within "
                f"{self._connect_timeout_s:g} s",
            )
        except aiohttp.SocketTimeoutError:
            await self._fail(
                send,
                report,
                started,
                "proxy",
                504,
                "upstream_timeout",
                f"the model server {self.url} sent nothing for {self._read_timeout_s:g} s",
            )
        except aiohttp.ClientSSLError as exc:
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
                started,
                "upstream",
                502,
                "upstream_tls_failed",
                f"TLS with the model server {self.url} failed ({_tls_reason(exc)}); {hint}",
            )
        except aiohttp.ClientConnectorError as exc:
            reason = exc.os_error.strerror or str(exc.os_error)
            await self._fail(
                send,
                report,
                started,
                "upstream",
                502,
                "upstream_unreachable",
                f"cannot connect to the model server {self.url}: {reason}; "
                "check that it runs and that upstream_url points at it",
            )
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            await self._fail(
                send,
                report,
                started,
                "upstream",
                502,
                "upstream_disconnected",
                f"the model server {self.url} closed the connection before its answer was complete",
            )

    async def _fail(
        self,
        send: Send,
        report: RelayReport,
        started: bool,
        aborted_by: AbortedBy,
        status: int,
        code: str,
        message: str,
    ) -> None:
        report.aborted_by = aborted_by
        report.error = message
        METRICS.upstream_errors.inc(code)
        if started:
            # Half a stream cannot be mended; cutting the connection tells the client it is short.
            raise StreamAborted(message)
        await send_error(send, status, message, "upstream_error", code)


def upstream_tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """Verification against the system trust store, plus the operator's CA bundle if given.

    Raises OSError / ssl.SSLError for an unreadable or malformed bundle.
    """
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    return context


def _tls_reason(exc: aiohttp.ClientSSLError) -> str:
    cause = getattr(exc, "certificate_error", None) or exc.os_error
    return getattr(cause, "verify_message", None) or getattr(cause, "reason", None) or "handshake"


async def _watch_for_disconnect(receive: Receive, watch: _Watch) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if not watch.done and watch.task is not None:
                    watch.client_gone = True
                    watch.task.cancel()
                return
