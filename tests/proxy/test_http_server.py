"""The proxy's HTTP/1.1 server, spoken to over a real socket, byte for byte."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from audit_proxy.activity import Activity
from audit_proxy.asgi import MAX_REQUEST_BODY, ON_CLIENT_GONE, Message, Receive, Scope, Send
from audit_proxy.busy_poll import BusyPoll
from audit_proxy.forward import StreamAborted
from audit_proxy.http_server import HttpServer
from bastion.stack import free_port

from .conftest import serving


class EchoApp:
    """Answers with what it saw; a few paths misbehave on purpose."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.disconnected = asyncio.Event()
        self.told_gone: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            self.events.append("shutdown")
            await send({"type": "lifespan.shutdown.complete"})
            return
        message = await receive()
        body = message["body"]
        path = scope["path"]
        if path == "/boom":
            raise RuntimeError("app failure")
        if path == "/cut":
            await send(start(200))
            await send({"type": "http.response.body", "body": b"half", "more_body": True})
            raise StreamAborted("upstream went away")
        if path == "/wait-for-client":
            await send(start(200))
            await send({"type": "http.response.body", "body": b"tick", "more_body": True})
            if (await receive())["type"] == "http.disconnect":
                self.disconnected.set()
            return
        if path == "/watch-client":
            scope[ON_CLIENT_GONE](lambda: self.told_gone.append("while running"))
            await send(start(200))
            await send({"type": "http.response.body", "body": b"tick", "more_body": True})
            await receive()  # the client's going away ends this wait
            scope[ON_CLIENT_GONE](lambda: self.told_gone.append("after it left"))
            self.disconnected.set()
            return
        if path == "/watch-then-answer":
            scope[ON_CLIENT_GONE](lambda: self.told_gone.append("after the answer"))
            await send(start(200))
            await send({"type": "http.response.body", "body": b"done"})
            return
        if path == "/stream":
            await send(start(200, [(b"content-type", b"text/event-stream")]))
            for part in (b"one", b"two"):
                await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        answer = b"%s %s %s q=%s" % (
            scope["method"].encode(),
            path.encode(),
            body,
            scope["query_string"],
        )
        await send(start(200))
        await send({"type": "http.response.body", "body": answer})


def start(status: int, headers: list[tuple[bytes, bytes]] | None = None) -> Message:
    return {"type": "http.response.start", "status": status, "headers": headers or []}


@pytest.fixture
async def served() -> AsyncIterator[tuple[EchoApp, int]]:
    app = EchoApp()
    server = HttpServer(app, "127.0.0.1", free_port(), graceful_s=1)
    task = await serving(server)
    yield app, server.port
    server.stop()
    await asyncio.wait_for(task, 5)


async def exchange(port: int, raw: bytes) -> bytes:
    """Send `raw`, and read until the server closes (or cuts) the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := await asyncio.wait_for(reader.read(65536), 5):
            data += chunk
    writer.close()
    return data


def post(path: str, body: bytes, *extra: bytes) -> bytes:
    head = b"POST %s HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n" % (path.encode(), len(body))
    return head + b"".join(extra) + b"\r\n" + body


async def test_a_sized_answer_and_keep_alive_with_pipelining(served: tuple[EchoApp, int]) -> None:
    _, port = served
    raw = post("/a?x=1", b"first") + post("/b%20c", b"second", b"connection: close\r\n")
    data = await exchange(port, raw)
    first, second = data.split(b"HTTP/1.1 200 OK\r\n")[1:]
    assert b"content-length: 19\r\n" in first and first.endswith(b"POST /a first q=x=1")
    assert b"connection: close\r\n" in second and second.endswith(b"POST /b c second q=")
    assert b"date: " in first


async def test_a_streamed_answer_is_chunked(served: tuple[EchoApp, int]) -> None:
    _, port = served
    data = await exchange(port, post("/stream", b"", b"connection: close\r\n"))
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head and b"content-length" not in head
    assert body == b"3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n"


async def test_expect_100_continue_and_a_chunked_request_body(
    served: tuple[EchoApp, int],
) -> None:
    _, port = served
    raw = (
        b"POST /c HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n"
        b"expect: 100-continue\r\nconnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    data = await exchange(port, raw)
    assert data.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")
    assert data.endswith(b"POST /c hello q=")


async def test_a_malformed_request_is_a_400_and_the_connection_closed(
    served: tuple[EchoApp, int],
) -> None:
    _, port = served
    data = await exchange(port, b"NOT HTTP\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400 ") and b"connection: close" in data
    assert b"malformed HTTP request" in data


async def test_a_body_over_the_limit_is_a_413_before_it_is_sent(
    served: tuple[EchoApp, int],
) -> None:
    _, port = served
    raw = b"POST /big HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % (MAX_REQUEST_BODY + 1)
    data = await exchange(port, raw)
    assert data.startswith(b"HTTP/1.1 413 ") and b"request_too_large" in data


async def test_an_app_error_is_a_500_and_a_cut_stream_cuts_the_connection(
    served: tuple[EchoApp, int],
) -> None:
    _, port = served
    data = await exchange(port, post("/boom", b""))
    assert data.startswith(b"HTTP/1.1 500 ") and b"connection: close" in data
    cut = await exchange(port, post("/cut", b""))
    # The head and the first chunk went out; the end of the chunked body never does.
    assert cut.startswith(b"HTTP/1.1 200 OK") and cut.endswith(b"4\r\nhalf\r\n")


async def leave_mid_answer(app: EchoApp, port: int, path: str) -> None:
    """Ask `path`, go away once the first chunk of its answer is in, and wait until the app
    has heard it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(post(path, b""))
    await reader.readuntil(b"tick\r\n")
    writer.close()
    await asyncio.wait_for(app.disconnected.wait(), 5)


async def test_the_app_hears_a_client_that_goes_away(served: tuple[EchoApp, int]) -> None:
    app, port = served
    await leave_mid_answer(app, port, "/wait-for-client")


async def test_the_server_calls_back_when_the_client_leaves_and_only_then(
    served: tuple[EchoApp, int],
) -> None:
    app, port = served
    await leave_mid_answer(app, port, "/watch-client")
    # Told once while it ran; a callback given after the client left is called at once.
    assert app.told_gone == ["while running", "after it left"]
    app.told_gone.clear()
    data = await exchange(port, post("/watch-then-answer", b"", b"connection: close\r\n"))
    assert data.endswith(b"done")
    await asyncio.sleep(0.05)
    assert app.told_gone == [], "an exchange that ended is not a client that left"


async def test_head_gets_headers_only(served: tuple[EchoApp, int]) -> None:
    _, port = served
    data = await exchange(port, b"HEAD /h HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"content-length: 11" in head and body == b""


async def test_a_request_trickled_in_slower_than_the_keep_alive_is_dropped() -> None:
    server = HttpServer(EchoApp(), "127.0.0.1", free_port(), keep_alive_s=0.3, graceful_s=1)
    task = asyncio.create_task(server.serve())
    await asyncio.sleep(0.1)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        started = asyncio.get_running_loop().time()
        with contextlib.suppress(ConnectionError):
            for byte in post("/slow", b"x"):
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.05)
                if reader.at_eof():
                    break
        assert await asyncio.wait_for(reader.read(), 2) == b""  # closed, never answered
        assert asyncio.get_running_loop().time() - started < 2
        writer.close()
    finally:
        server.stop()
        await asyncio.wait_for(task, 5)


async def test_close_requests_keep_the_loop_polling_and_then_it_sleeps() -> None:
    server = HttpServer(EchoApp(), "127.0.0.1", free_port(), graceful_s=1, busy_poll_us=10_000)
    task = asyncio.create_task(server.serve())
    for _ in range(100):
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            break
        await asyncio.sleep(0.01)
    assert server.busy_poll is not None
    # Back-to-back requests open both windows, a few touches at a time, up to busy_poll_us.
    for i in range(8):
        writer.write(post(f"/{i}", b"x"))
        await reader.readuntil(f"POST /{i} x q=".encode())
    assert all(window > 0 for window in server.busy_poll.windows_s)
    assert server.busy_poll.polling
    # Each is only as wide as the gaps it covered, well under a millisecond here: widen both
    # to measure the spinning.
    server.busy_poll.windows_s = [0.01, 0.01]
    writer.write(post("/last", b"x"))
    await reader.readuntil(b"POST /last x q=")
    # The loop spins while it waits (the test's own sleep runs on it) ...
    cpu = time.thread_time()
    await asyncio.sleep(0.006)
    awake = time.thread_time() - cpu
    await asyncio.sleep(0.02)  # past the window
    assert not server.busy_poll.polling
    # ... and sleeps once the window has passed.
    cpu = time.thread_time()
    await asyncio.sleep(0.03)
    asleep = time.thread_time() - cpu
    writer.close()
    server.stop()
    await asyncio.wait_for(task, 5)
    assert awake > 0.3 * 0.006, f"the loop slept in its busy-poll window ({awake * 1e3:.1f} ms)"
    assert asleep < 0.1 * 0.03, f"the loop polled after its window ({asleep * 1e3:.1f} ms)"


def test_busy_poll_window_is_bounded() -> None:
    with pytest.raises(
        ValueError, match=r"busy_poll_us must be 1 to 10000 \(0 turns polling off\)"
    ):
        BusyPoll(asyncio.new_event_loop(), 20_000)


async def test_the_server_counts_its_exchanges_in_flight_for_work_that_waits_for_none() -> None:
    activity = Activity()
    seen: list[int] = []
    idle_after: list[int] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await receive()
        seen.append(activity.in_flight)
        activity.when_idle(lambda: idle_after.append(len(seen)))
        await send(start(200))
        await send({"type": "http.response.body", "body": b"ok"})

    server = HttpServer(app, "127.0.0.1", free_port(), graceful_s=1, activity=activity)
    task = await serving(server)
    # Two pipelined requests on one connection, then a third on its own.
    pair = post("/a", b"1") + post("/b", b"2", b"connection: close\r\n")
    data = await exchange(server.port, pair)
    assert data.count(b"HTTP/1.1 200 OK") == 2
    assert await exchange(server.port, post("/c", b"3", b"connection: close\r\n"))
    await asyncio.sleep(0.01)
    server.stop()
    await asyncio.wait_for(task, 5)
    # (b starts as a ends, before a's task is done: for a moment both count.)
    assert seen[0] == 1 and seen[1] in (1, 2) and seen[2] == 1
    assert activity.in_flight == 0
    # Whoever waited for no exchange in flight heard of it after the pipelined pair, and after c.
    assert idle_after == [2, 2, 3]
