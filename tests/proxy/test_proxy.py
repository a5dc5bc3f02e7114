"""The audit proxy's promises over real HTTP: a `bastion proxy` process, a recording upstream."""

from __future__ import annotations

import hashlib
import json
import resource
import socket
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from audit_proxy.store import FILE_AFTER_S, OutcomeRecord
from bastion.stack import free_port

from .conftest import SERVICE_KEY, Proxy, start_proxy, stop_proxy
from .fake_upstream import SLOW_PAUSE_S, FakeUpstream

COMPLETION = {"model": "tiny", "prompt": "def add(a, b):", "max_tokens": 8}


def auth(key: str, feature: str | None = "completion") -> dict[str, str]:
    headers = {"Authorization": f"Bearer {key}"}
    if feature is not None:
        headers["X-Bastion-Feature"] = feature
    return headers


def wait_for_outcome(proxy: Proxy, request_id: str, timeout_s: float = 5.0) -> OutcomeRecord:
    store = proxy.store()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            outcome = store.outcome(request_id)
            if outcome is not None:
                return outcome
            time.sleep(0.02)
    finally:
        store.close()
    raise AssertionError(f"no outcome recorded for {request_id}")


def open_stream(proxy: Proxy, key: str, body: dict[str, object]) -> tuple[socket.socket, bytes]:
    """Send a streaming request on a raw socket; return it with the response head."""
    parts = urlsplit(proxy.url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=5)
    payload = json.dumps(body).encode()
    sock.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {key}\r\nX-Bastion-Feature: completion\r\n".encode()
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    return sock, sock.recv(65536)


def request_id_of(head: bytes) -> str:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"x-bastion-request-id":
            return value.strip().decode()
    raise AssertionError(f"no request id in {head!r}")


# --- authentication --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer bst_not-a-real-key"}, {"Authorization": "Basic YWxpY2U6eA=="}],
    ids=["missing", "wrong", "not-bearer"],
)
def test_no_valid_key_is_401_and_nothing_goes_upstream(
    proxy: Proxy, upstream: FakeUpstream, headers: dict[str, str]
) -> None:
    before = len(proxy.store().requests())
    response = httpx.post(proxy.url + "/v1/completions", json=COMPLETION, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert upstream.received == []
    assert len(proxy.store().requests()) == before


def test_revoked_and_expired_keys_are_401(proxy: Proxy, upstream: FakeUpstream) -> None:
    keys = proxy.keys()
    revoked = keys.create("bob")
    assert httpx.post(
        proxy.url + "/v1/completions", json=COMPLETION, headers=auth(revoked)
    ).is_success
    keys.revoke("bob")
    expired = keys.create("carol", expires_at=datetime.now(UTC) - timedelta(seconds=1))
    upstream.clear()
    for key in (revoked, expired):
        response = httpx.post(proxy.url + "/v1/completions", json=COMPLETION, headers=auth(key))
        assert response.status_code == 401
    assert upstream.received == []


# --- fail closed -----------------------------------------------------------------------------


def test_audit_store_that_cannot_write_is_503_and_nothing_goes_upstream(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    proxy = start_proxy(upstream.url, tmp_path / "data", tmp_path / "proxy.log")
    try:
        user_key = proxy.keys().create("alice")
        assert httpx.post(
            proxy.url + "/v1/completions", json=COMPLETION, headers=auth(user_key)
        ).is_success
        upstream.clear()
        before = len(proxy.store().requests())
        # Root ignores file modes, so the store is made unwritable for real: the proxy process
        # may no longer grow a file (its writes fail with EFBIG, as on a full disk).
        limits = resource.prlimit(proxy.process.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(proxy.process.pid, resource.RLIMIT_FSIZE, (0, limits[1]))
        try:
            response = httpx.post(
                proxy.url + "/v1/completions", json=COMPLETION, headers=auth(user_key), timeout=10
            )
        finally:
            resource.prlimit(proxy.process.pid, resource.RLIMIT_FSIZE, limits)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "audit_store_unavailable"
        assert upstream.received == []
        # Once the store can write again, so can the proxy.
        response = httpx.post(
            proxy.url + "/v1/completions", json=COMPLETION, headers=auth(user_key)
        )
        assert response.status_code == 200
        assert len(proxy.store().requests()) == before + 1
    finally:
        stop_proxy(proxy)


def test_a_locked_database_delays_filing_but_loses_nothing(
    proxy: Proxy, upstream: FakeUpstream, user_key: str
) -> None:
    """Records are committed to the staging file; SQLite being busy only delays their filing."""
    before = len(proxy.store().requests())
    blocker = sqlite3.connect(proxy.data_dir / "audit.sqlite3", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        for _ in range(3):
            started = time.monotonic()
            response = httpx.post(
                proxy.url + "/v1/completions", json=COMPLETION, headers=auth(user_key), timeout=10
            )
            assert response.status_code == 200
            # The proxy never waits on the database's lock (5 s) to answer.
            assert time.monotonic() - started < 1
            time.sleep(FILE_AFTER_S * 3)  # its filing comes due, and finds the lock taken
        assert len(upstream.received) == 3
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    requests = proxy.store().requests()
    assert len(requests) == before + 3
    assert all(proxy.store().outcome(r.id) is not None for r in requests[before:])


# --- upstream: keys, errors, pass-through ----------------------------------------------------


def test_upstream_gets_the_service_key_never_the_users(
    proxy: Proxy, upstream: FakeUpstream, user_key: str
) -> None:
    response = httpx.post(proxy.url + "/v1/completions", json=COMPLETION, headers=auth(user_key))
    assert response.status_code == 200
    assert response.json()["choices"][0]["text"] == "hello"
    (got,) = upstream.received
    assert got.headers["authorization"] == f"Bearer {SERVICE_KEY}"
    assert user_key not in json.dumps(got.headers)
    assert "x-bastion-feature" not in got.headers
    assert got.json() == COMPLETION
    assert got.headers["x-request-id"] == response.headers["x-bastion-request-id"]


def test_upstream_rejecting_the_service_key_is_502_without_the_key(
    proxy: Proxy, user_key: str
) -> None:
    body = {**COMPLETION, "model": "reject-key"}
    response = httpx.post(proxy.url + "/v1/completions", json=body, headers=auth(user_key))
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "upstream_auth_failed"
    assert "service key" in error["message"]
    assert SERVICE_KEY not in response.text
    assert SERVICE_KEY not in proxy.log()


def test_upstream_refusing_connections_is_502_naming_it(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    proxy = start_proxy(dead, tmp_path / "data", tmp_path / "proxy.log")
    try:
        key = proxy.keys().create("dora")
        response = httpx.post(proxy.url + "/v1/completions", json=COMPLETION, headers=auth(key))
        assert response.status_code == 502
        error = response.json()["error"]
        assert error["code"] == "upstream_unreachable"
        assert dead in error["message"]
        outcome = wait_for_outcome(proxy, response.headers["x-bastion-request-id"])
        assert (outcome.status, outcome.aborted_by, outcome.completed) == (502, "upstream", False)
    finally:
        stop_proxy(proxy)


@pytest.mark.parametrize(
    ("path", "answer"),
    [("/tokenize", {"count": 3, "max_model_len": 2048, "tokens": [1, 2, 3]}),
     ("/extras/tokenize", {"tokens": [1, 2, 3]})],
)  # fmt: skip
def test_tokenize_is_passed_through_and_audited(
    proxy: Proxy, upstream: FakeUpstream, user_key: str, path: str, answer: dict[str, object]
) -> None:
    body = {"model": "tiny", "prompt": "def add"}
    response = httpx.post(proxy.url + path, json=body, headers=auth(user_key, "chat"))
    assert response.status_code == 200
    assert response.json() == answer
    assert [r.path for r in upstream.received] == [path]
    request = proxy.store().requests()[-1]
    assert (request.route, request.feature, request.user) == (path, "tokenize", "alice")
    assert json.loads(request.body) == body


def test_models_needs_a_key_and_is_forwarded(proxy: Proxy, user_key: str) -> None:
    assert httpx.get(proxy.url + "/v1/models").status_code == 401
    response = httpx.get(proxy.url + "/v1/models", headers=auth(user_key))
    assert response.json()["data"][0]["id"] == "fake"


# --- streaming and records -------------------------------------------------------------------


def test_stream_reaches_the_client_before_upstream_finishes(proxy: Proxy, user_key: str) -> None:
    body = {**COMPLETION, "model": "slow-stream", "stream": True}
    started = time.monotonic()
    with httpx.stream(
        "POST", proxy.url + "/v1/completions", json=body, headers=auth(user_key)
    ) as response:
        chunks = response.iter_raw()
        first = next(chunks)
        first_at = time.monotonic() - started
        rest = b"".join(chunks)
        done_at = time.monotonic() - started
    assert first.startswith(b"data: ") and b"first" in first
    assert b"[DONE]" in rest
    assert first_at < SLOW_PAUSE_S / 2, f"first chunk after {first_at:.3f}s"
    assert done_at >= SLOW_PAUSE_S


def test_streamed_completion_is_recorded_byte_for_byte(proxy: Proxy, user_key: str) -> None:
    body = {**COMPLETION, "stream": True}
    with httpx.stream(
        "POST", proxy.url + "/v1/completions", json=body, headers=auth(user_key)
    ) as response:
        received = b"".join(response.iter_raw())
        request_id = response.headers["x-bastion-request-id"]
    outcome = wait_for_outcome(proxy, request_id)
    (request,) = [r for r in proxy.store().requests() if r.id == request_id]
    assert (request.user, request.feature, request.route, request.model, request.stream) == (
        "alice", "completion", "/v1/completions", "tiny", True,
    )  # fmt: skip
    assert request.body_sha256 == hashlib.sha256(request.body).hexdigest()
    assert json.loads(request.body) == body
    assert outcome.status == 200
    assert outcome.bytes_out == len(received)
    assert outcome.sha256 == hashlib.sha256(received).hexdigest()
    assert outcome.response_body == received
    assert (outcome.completed, outcome.aborted_by) == (True, None)
    assert (outcome.prompt_tokens, outcome.completion_tokens, outcome.total_tokens) == (5, 3, 8)
    assert outcome.finish_reason == "length"
    assert outcome.ttfb_ms is not None and 0 < outcome.ttfb_ms <= outcome.latency_ms


def test_unknown_or_missing_feature_is_other(proxy: Proxy, user_key: str) -> None:
    for feature in ("telemetry", None):
        response = httpx.post(
            proxy.url + "/v1/chat/completions",
            json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}]},
            headers=auth(user_key, feature),
        )
        assert response.status_code == 200
        request = proxy.store().requests()[-1]
        assert (request.feature, request.route) == ("other", "/v1/chat/completions")
    outcome = wait_for_outcome(proxy, request.id)
    assert outcome.total_tokens == 8 and outcome.completed


def test_client_abort_mid_stream_closes_upstream(
    proxy: Proxy, upstream: FakeUpstream, user_key: str
) -> None:
    sock, head = open_stream(proxy, user_key, {**COMPLETION, "model": "endless", "stream": True})
    assert head.startswith(b"HTTP/1.1 200")
    sock.recv(65536)
    closed = time.monotonic()
    sock.close()
    (got,) = upstream.received
    assert got.closed_by_peer.wait(2), "the upstream connection stayed open"
    assert got.closed_at is not None and got.closed_at - closed < 0.5
    outcome = wait_for_outcome(proxy, request_id_of(head))
    assert (outcome.aborted_by, outcome.completed, outcome.status) == ("client", False, 200)
    assert outcome.bytes_out > 0


def test_client_abort_before_first_byte_closes_upstream(
    proxy: Proxy, upstream: FakeUpstream, user_key: str
) -> None:
    parts = urlsplit(proxy.url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=5)
    payload = json.dumps({**COMPLETION, "model": "hang"}).encode()
    sock.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {user_key}\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    deadline = time.monotonic() + 5
    while not upstream.received and time.monotonic() < deadline:
        time.sleep(0.01)
    closed = time.monotonic()
    sock.close()
    (got,) = upstream.received
    assert got.closed_by_peer.wait(2), "the upstream connection stayed open"
    assert got.closed_at is not None and got.closed_at - closed < 0.5
    request = proxy.store().requests()[-1]
    outcome = wait_for_outcome(proxy, request.id)
    assert (outcome.aborted_by, outcome.completed, outcome.status) == ("client", False, None)
    assert outcome.bytes_out == 0


def test_upstream_cutting_the_stream_is_recorded_and_passed_on(proxy: Proxy, user_key: str) -> None:
    body = {**COMPLETION, "model": "cut", "stream": True}
    received = b""
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream(
            "POST", proxy.url + "/v1/completions", json=body, headers=auth(user_key)
        ) as response,
    ):
        request_id = response.headers["x-bastion-request-id"]
        for chunk in response.iter_raw():
            received += chunk
    outcome = wait_for_outcome(proxy, request_id)
    assert (outcome.aborted_by, outcome.completed, outcome.status) == ("upstream", False, 200)
    assert outcome.bytes_out == len(received) > 0
    assert outcome.sha256 == hashlib.sha256(received).hexdigest()
    assert "Traceback" not in proxy.log()


def test_access_log_is_one_line_per_request_without_secrets(proxy: Proxy, user_key: str) -> None:
    httpx.post(proxy.url + "/v1/completions", json=COMPLETION, headers=auth(user_key))
    log = proxy.log()
    assert user_key not in log and SERVICE_KEY not in log
    assert any('alice "POST /v1/completions" 200' in line for line in log.splitlines())


def test_a_second_proxy_on_the_same_sqlite_store_refuses_to_start(
    proxy: Proxy, upstream: FakeUpstream, tmp_path: Path
) -> None:
    second = start_proxy(upstream.url, proxy.data_dir, tmp_path / "second.log", wait=False)
    try:
        assert second.process.wait(20) == 1
    finally:
        if second.process.poll() is None:
            stop_proxy(second)
    assert "locked by another process writing this audit store" in second.log()
    assert "store_url" in second.log()  # what to use for several replicas
