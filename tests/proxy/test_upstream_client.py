"""The proxy's upstream client against a raw socket server that misbehaves on demand."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from audit_proxy.upstream_client import (
    UpstreamDisconnected,
    UpstreamPool,
    UpstreamReadTimeout,
    UpstreamUnreachable,
)
from bastion.stack import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
JSON = [(b"content-type", b"application/json")]


class RawServer:
    """Accepts connections and hands each to `handler`; counts connections and their ends."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.port = free_port()
        self.accepted = 0
        self.closed_by_client = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            await self.handler(reader, writer)
            if await reader.read() == b"":
                self.closed_by_client.set()
        except (ConnectionError, asyncio.IncompleteReadError):
            self.closed_by_client.set()
        writer.close()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


def sized(body: bytes, *extra: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), b"".join(extra), body)


@contextlib.asynccontextmanager
async def pool_for(server: RawServer, **options: float) -> AsyncIterator[UpstreamPool]:
    pool = UpstreamPool(
        f"http://127.0.0.1:{server.port}/base",
        None,
        connect_timeout_s=options.get("connect", 2.0),
        read_timeout_s=options.get("read", 2.0),
        max_connections=int(options.get("slots", 4)),
    )
    try:
        yield pool
    finally:
        await pool.close()


async def test_keep_alive_reuses_one_connection_and_sends_the_base_path() -> None:
    seen: list[bytes] = []

    async def answer_twice(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for text in (b"one", b"two"):
            seen.append(await read_request(reader))
            writer.write(sized(text))

    async with RawServer(answer_twice) as server, pool_for(server) as pool:
        bodies = []
        for _ in range(2):
            response = await pool.request("POST", "/v1/x?q=1", JSON, b"{}")
            bodies.append(await response.read())
            response.release()
    assert bodies == [b"one", b"two"] and server.accepted == 1
    assert seen[0].startswith(b"POST /base/v1/x?q=1 HTTP/1.1\r\n")
    assert b"content-length: 2\r\n" in seen[0] and seen[0].endswith(b"\r\n\r\n{}")


async def test_a_connection_the_server_closed_while_idle_is_replaced() -> None:
    async def answer_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(sized(b"ok"))  # keep-alive by default, but the server hangs up anyway
        await writer.drain()
        writer.close()

    async with RawServer(answer_then_close) as server, pool_for(server) as pool:
        for _ in range(2):
            response = await pool.request("POST", "/", JSON, b"{}")
            assert await response.read() == b"ok"
            response.release()
            await asyncio.sleep(0.05)
    assert server.accepted == 2


async def test_chunked_and_close_delimited_bodies() -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\none\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"3\r\ntwo\r\n0\r\n\r\n")

    async with RawServer(chunked) as server, pool_for(server) as pool:
        response = await pool.request("POST", "/", JSON, b"{}")
        assert [chunk async for chunk in response.chunks()] == [b"one", b"two"]
        response.release()

    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it")
        await writer.drain()
        writer.close()

    async with RawServer(until_close) as server, pool_for(server) as pool:
        response = await pool.request("POST", "/", JSON, b"{}")
        assert await response.read() == b"all of it"
        response.release()


async def test_a_silent_server_is_a_read_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async with RawServer(silent) as server, pool_for(server, read=0.2) as pool:
        with pytest.raises(UpstreamReadTimeout):
            await pool.request("POST", "/", JSON, b"{}")


async def test_a_stream_cut_short_is_disconnected() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\none\r\n")
        await writer.drain()
        writer.transport.abort()

    async with RawServer(cut) as server, pool_for(server) as pool:
        response = await pool.request("POST", "/", JSON, b"{}")
        with pytest.raises(UpstreamDisconnected):
            async for _ in response.chunks():
                pass
        response.release()


async def test_nobody_listening_is_unreachable_with_the_reason() -> None:
    pool = UpstreamPool(f"http://127.0.0.1:{free_port()}", None, 1.0, 1.0, 4)
    with pytest.raises(UpstreamUnreachable, match=r"(?i)refused"):
        await pool.request("POST", "/", JSON, b"{}")


async def test_an_abandoned_answer_closes_its_connection_and_frees_its_slot() -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(100):
            writer.write(b"4\r\ntick\r\n")
            await writer.drain()
            await asyncio.sleep(0.02)

    async with RawServer(endless) as server, pool_for(server, slots=1) as pool:
        response = await pool.request("POST", "/", JSON, b"{}")
        async for _ in response.chunks():
            break
        response.release()  # the client went away: the model server must hear it
        await asyncio.wait_for(server.closed_by_client.wait(), 2)
        # The only slot is free again.
        second = await asyncio.wait_for(pool.request("POST", "/", JSON, b"{}"), 2)
        second.release()
    assert server.accepted == 2


async def test_a_server_that_took_the_request_and_died_does_not_get_it_twice() -> None:
    async def answer_then_die(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(sized(b"ok"))
        await read_request(reader)  # the second request, on the same connection
        await asyncio.sleep(0.8)  # "working" on it, past the stale window ...
        writer.transport.abort()  # ... then the server dies

    async with RawServer(answer_then_die) as server, pool_for(server) as pool:
        first = await pool.request("POST", "/", JSON, b"{}")
        assert await first.read() == b"ok"
        first.release()
        with pytest.raises(UpstreamDisconnected):
            await pool.request("POST", "/", JSON, b"{}")
    assert server.accepted == 1
