"""The proxy's HTTP/1.1 client to the model server: pooled keep-alive connections over httptools.

Why not aiohttp: in the proxy, the relay through aiohttp's client cost about 0.45 ms per request
(the instant upstream's own work included), while a whole bare pass-through on httptools both
ways added 0.15 ms (see `audit_proxy.http_server`). The proxy
asks little of a client: one request at a time per connection, a whole body to send, and an
answer it reads whole (when sized) or chunk by chunk (when streamed). It keeps its typed errors
so that the relay can tell a timeout from a refusal from a failed TLS handshake.

A connection goes back to the pool only after a complete answer; an answer abandoned halfway
(the client left) closes its connection, which is how the model server learns to stop.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

# Idle connections older than this are not reused: servers close theirs after 5 s by default
# (uvicorn, which vLLM runs on), and a request written into a closing socket is lost.
IDLE_REUSE_S = 4.0
READ_BUFFER_HIGH = 256 * 1024
# A reused connection that fails this soon, before any byte of an answer, was closed by the
# server while idle: the request is sent again on a new one. Later failures are not retried (a
# model server that took the request and then died must not get it twice).
STALE_WITHIN_S = 0.5


class UpstreamError(Exception):
    """Base of the client's errors; the message says what happened."""


class UpstreamConnectTimeout(UpstreamError):
    """No connection (TCP and TLS) within the connect timeout."""


class UpstreamReadTimeout(UpstreamError):
    """The server sent nothing for the read timeout."""


class UpstreamTLSError(UpstreamError):
    """The TLS handshake failed; `reason` is the verifier's message when there is one."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UpstreamUnreachable(UpstreamError):
    """The connection was refused or the host cannot be reached; `reason` is the OS's."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UpstreamDisconnected(UpstreamError):
    """The server closed the connection before its answer was complete."""


@dataclass(frozen=True)
class Origin:
    """Where the model server is: scheme, host, port and a path prefix."""

    tls: bool
    host: str
    port: int
    base_path: str

    @classmethod
    def parse(cls, url: str) -> Origin:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream_url {url!r}: expected http(s)://host[:port][/path]")
        tls = parts.scheme == "https"
        return cls(tls, parts.hostname, parts.port or (443 if tls else 80), parts.path.rstrip("/"))

    @property
    def host_header(self) -> bytes:
        default = 443 if self.tls else 80
        name = f"[{self.host}]" if ":" in self.host else self.host
        return (name if self.port == default else f"{name}:{self.port}").encode("idna")


class _Connection(asyncio.Protocol):
    """One keep-alive connection; parses one response at a time."""

    def __init__(self, read_timeout_s: float) -> None:
        self.read_timeout_s = read_timeout_s
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = time.monotonic()
        self.response: UpstreamResponse | None = None
        self.on_lost: Callable[[_Connection], None] | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def send(self, request: bytes, response: UpstreamResponse) -> None:
        assert self.transport is not None
        self.response = response
        self.parser = httptools.HttpResponseParser(self)
        self.transport.write(request)
        self._arm()

    def data_received(self, data: bytes) -> None:
        self._arm()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamDisconnected(f"malformed HTTP response ({exc})"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._disarm()
        if self.on_lost is not None:
            self.on_lost(self)
        response = self.response
        if response is not None and not response.complete:
            if response.delimited_by_close:
                response.finish()  # such a body ends where the connection does
            else:
                response.fail(UpstreamDisconnected("connection closed mid-answer"))

    def pause_writing(self) -> None:  # requests are small; nothing to hold back
        pass

    def resume_writing(self) -> None:
        pass

    # -- httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.response is not None:
            self.response.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.response is not None:
            self.response.started(self.parser.get_status_code(), self.parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response.feed(body)
            if self.response.buffered > READ_BUFFER_HIGH and self.transport is not None:
                # The client reads slowly: hold the server back; its silence is no timeout.
                self.transport.pause_reading()
                self._disarm()

    def on_message_complete(self) -> None:
        self._disarm()
        if self.response is not None:
            self.response.finish()

    # -- timeouts and teardown

    def resume(self) -> None:
        if self.transport is not None and not self.closed and not self.transport.is_reading():
            self.transport.resume_reading()
            self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self._loop.call_later(self.read_timeout_s, self._timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._fail(UpstreamReadTimeout(f"nothing for {self.read_timeout_s:g} s"))

    def _fail(self, error: UpstreamError) -> None:
        self._disarm()
        if self.response is not None:
            self.response.fail(error)
        self.abort()

    def abort(self) -> None:
        self.closed = True
        self._disarm()
        if self.transport is not None:
            self.transport.abort()


class UpstreamResponse:
    """An answer as it arrives: status and headers first, then the body."""

    def __init__(self, connection: _Connection, pool: UpstreamPool) -> None:
        self._connection = connection
        self._pool = pool
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = False
        self.delimited_by_close = False
        self.owns_slot = False
        self.complete = False
        self.buffered = 0
        self._chunks: deque[bytes] = deque()
        self._error: UpstreamError | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._head: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._released = False

    @property
    def content_length(self) -> int | None:
        for name, value in self.headers:
            if name.lower() == b"content-length":
                try:
                    return int(value)
                except ValueError:
                    return None
        return None

    async def read(self) -> bytes:
        """The whole body."""
        parts = [chunk async for chunk in self.chunks()]
        return b"".join(parts)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body, as it arrives."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self.buffered -= len(chunk)
                if self.buffered <= READ_BUFFER_HIGH // 2:
                    self._connection.resume()
                yield chunk
                continue
            if self.complete:
                return
            if self._error is not None:
                raise self._error
            self._wakeup = asyncio.get_running_loop().create_future()
            await self._wakeup

    def release(self) -> None:
        """Hand the connection back (complete answer) or close it (anything else)."""
        if self._released:
            return
        self._released = True
        connection = self._connection
        connection.response = None
        if self.complete and self.keep_alive and not connection.closed:
            self._pool.give_back(connection)
        else:
            connection.abort()
        if self.owns_slot:
            self._pool.free_slot()

    async def head(self) -> None:
        """Wait for the status and headers; raises `UpstreamError` when none come."""
        await self._head

    # -- from the connection

    def started(self, status: int, keep_alive: bool) -> None:
        self.status = status
        self.keep_alive = keep_alive
        framed = any(
            name.lower() in (b"content-length", b"transfer-encoding") for name, _ in self.headers
        )
        self.delimited_by_close = not framed and status not in (204, 304) and status >= 200
        if not self._head.done():
            self._head.set_result(None)

    def feed(self, chunk: bytes) -> None:
        if chunk:
            self._chunks.append(chunk)
            self.buffered += len(chunk)
            self._wake()

    def finish(self) -> None:
        self.complete = True
        self._wake()

    def fail(self, error: UpstreamError) -> None:
        if self.complete:
            return
        self._error = error
        if not self._head.done():
            self._head.set_exception(error)
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)


class UpstreamPool:
    """Keep-alive connections to one model server, at most `max_connections` at a time."""

    def __init__(
        self,
        url: str,
        ssl_context: ssl.SSLContext | None,
        connect_timeout_s: float,
        read_timeout_s: float,
        max_connections: int,
    ) -> None:
        self.origin = Origin.parse(url)
        self._host = self.origin.host_header
        self._ssl = ssl_context if self.origin.tls else None
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)
        self._open: set[_Connection] = set()

    async def request(
        self, method: str, target: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> UpstreamResponse:
        """Send a request; returns once the status and headers are in. Raises `UpstreamError`.

        The caller must `release()` the response, also when it stops reading early.
        """
        head = [b"%s %s HTTP/1.1\r\nhost: %s\r\n" % (
            method.encode("ascii"), (self.origin.base_path + target).encode("latin-1"),
            self._host,
        )]  # fmt: skip
        head.extend(b"%s: %s\r\n" % (name, value) for name, value in headers)
        if body or method not in ("GET", "HEAD"):
            head.append(b"content-length: %d\r\n" % len(body))
        head.append(b"\r\n")
        request = b"".join(head) + body
        await self._slots.acquire()
        try:
            return await self._exchange(request)
        except BaseException:
            self._slots.release()
            raise

    async def _exchange(self, request: bytes) -> UpstreamResponse:
        while True:
            connection, reused = self._idle_connection(), True
            if connection is None:
                connection, reused = await self._connect(), False
            response = UpstreamResponse(connection, self)
            sent_at = time.monotonic()
            connection.send(request, response)
            try:
                await response.head()
            except UpstreamDisconnected:
                # No status line came back (it would have ended this wait).
                response.release()
                if reused and time.monotonic() - sent_at < STALE_WITHIN_S:
                    continue  # the server had closed this idle connection: try a fresh one
                raise
            except BaseException:
                response.release()
                raise
            response.owns_slot = True
            return response

    def _idle_connection(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed and now - connection.idle_since < IDLE_REUSE_S:
                return connection
            connection.abort()
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(self._read_timeout_s),
                    self.origin.host,
                    self.origin.port,
                    ssl=self._ssl,
                    server_hostname=self.origin.host if self._ssl is not None else None,
                ),
                self._connect_timeout_s,
            )
        except TimeoutError:
            raise UpstreamConnectTimeout(
                f"no connection within {self._connect_timeout_s:g} s"
            ) from None
        except ssl.SSLError as exc:
            reason = getattr(exc, "verify_message", None) or exc.reason or "handshake"
            raise UpstreamTLSError(str(reason)) from None
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise UpstreamUnreachable(reason) from None
        self._open.add(connection)
        connection.on_lost = self._open.discard
        return connection

    def give_back(self, connection: _Connection) -> None:
        connection.idle_since = time.monotonic()
        self._idle.append(connection)

    def free_slot(self) -> None:
        self._slots.release()

    async def close(self) -> None:
        for connection in list(self._open):
            connection.abort()
        self._open.clear()
        self._idle.clear()
