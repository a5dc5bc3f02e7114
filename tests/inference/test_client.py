"""The client against a real local HTTP server: streaming, errors, cancellation, dialects."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from inference import (
    LLAMA_CPP,
    VLLM,
    ChatMessage,
    ClientConfig,
    MalformedStream,
    ModelAuthError,
    ModelClient,
    ModelServerError,
    ModelTimeout,
    ModelUnreachable,
)

API_KEY = "sk-test-secret-key-123"  # the key tests/inference/conftest.py's server accepts
FakeModelServer = Any
StartServer = Callable[..., Awaitable[Any]]


def make_client(url: str, **overrides: object) -> ModelClient:
    config: dict[str, object] = {"base_url": url, "api_key": API_KEY, "read_timeout": 5.0}
    config.update(overrides)
    return ModelClient(ClientConfig.model_validate(config))


async def complete(client: ModelClient, prompt: str) -> str:
    stream = client.stream_completion(
        prompt, model="m", max_tokens=8, temperature=0.0, stop=["\n\n"], feature="completion"
    )
    return "".join([delta async for delta in stream])


async def test_stream_completion_yields_deltas_and_sends_headers(
    model_server: FakeModelServer,
) -> None:
    async with make_client(model_server.url) as client:
        assert await complete(client, "ok") == "Hello world"
    path, headers, body = model_server.requests[-1]
    assert path == "/v1/completions"
    assert headers["X-Bastion-Feature"] == "completion"
    assert headers["Authorization"] == f"Bearer {API_KEY}"
    assert body["stream"] is True and body["stop"] == ["\n\n"] and body["max_tokens"] == 8


async def test_stream_chat(model_server: FakeModelServer) -> None:
    async with make_client(model_server.url + "/v1/") as client:
        stream = client.stream_chat(
            [ChatMessage(role="user", content="ok")],
            model="m",
            max_tokens=8,
            temperature=0.2,
            stop=[],
            feature="chat",
        )
        assert "".join([d async for d in stream]) == "Hello world"
    path, headers, body = model_server.requests[-1]
    assert path == "/v1/chat/completions" and headers["X-Bastion-Feature"] == "chat"
    assert body["messages"] == [{"role": "user", "content": "ok"}] and "stop" not in body


async def test_unauthorized_is_a_typed_error(model_server: FakeModelServer) -> None:
    async with make_client(model_server.url, api_key="wrong") as client:
        with pytest.raises(ModelAuthError) as caught:
            await complete(client, "ok")
        assert caught.value.status == 401
        assert "invalid api key" in str(caught.value)
        with pytest.raises(ModelAuthError):
            await client.list_models()


async def test_server_error_has_status_and_excerpt(model_server: FakeModelServer) -> None:
    async with make_client(model_server.url) as client:
        with pytest.raises(ModelServerError) as caught:
            await complete(client, "fail")
    assert caught.value.status == 500 and "engine exploded" in str(caught.value)


async def test_error_event_inside_the_stream(model_server: FakeModelServer) -> None:
    async with make_client(model_server.url) as client:
        with pytest.raises(ModelServerError, match="bad stop") as caught:
            await complete(client, "error-event")
    assert caught.value.status == 400


async def test_stall_is_a_timeout(model_server: FakeModelServer) -> None:
    async with make_client(model_server.url, read_timeout=0.3) as client:
        with pytest.raises(ModelTimeout, match=r"0\.3s"):
            await complete(client, "stall")


async def test_cut_stream_is_malformed(model_server: FakeModelServer) -> None:
    async with make_client(model_server.url) as client:
        with pytest.raises(MalformedStream):
            await complete(client, "cut")
        with pytest.raises(MalformedStream, match=r"\[DONE\]"):
            await complete(client, "nodone")


async def test_malformed_json_is_malformed(model_server: FakeModelServer) -> None:
    async with make_client(model_server.url) as client:
        with pytest.raises(MalformedStream, match="not JSON"):
            await complete(client, "malformed")


async def test_connection_refused_is_unreachable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with make_client(f"http://127.0.0.1:{port}") as client:
        with pytest.raises(ModelUnreachable) as caught:
            await client.list_models()
    assert not caught.value.tls and "running" in str(caught.value)


async def test_aclose_closes_the_upstream_connection(model_server: FakeModelServer) -> None:
    async with make_client(model_server.url) as client:
        stream = client.stream_completion(
            "endless", model="m", max_tokens=8, temperature=0.0, stop=[], feature="completion"
        )
        assert await stream.__anext__() == "x"
        await stream.aclose()
        await asyncio.wait_for(model_server.disconnected.wait(), timeout=3)


async def test_cancelling_the_consumer_closes_the_upstream_connection(
    model_server: FakeModelServer,
) -> None:
    started = asyncio.Event()

    async def consume(client: ModelClient) -> None:
        async for _ in client.stream_completion(
            "endless", model="m", max_tokens=8, temperature=0.0, stop=[], feature="completion"
        ):
            started.set()

    async with make_client(model_server.url) as client:
        task = asyncio.create_task(consume(client))
        await asyncio.wait_for(started.wait(), timeout=3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(model_server.disconnected.wait(), timeout=3)
        # The pool is still usable afterwards.
        assert await complete(client, "ok") == "Hello world"


async def test_vllm_dialect_is_detected_once(model_server: FakeModelServer) -> None:
    async with make_client(model_server.url) as client:
        assert await client.tokenize("m", "abc") == [97, 98, 99]
        assert await client.tokenize("m", "d") == [100]
        assert client.dialect is VLLM
        await complete(client, "ok")
    paths = [path for path, _, _ in model_server.requests]
    assert paths.count("/v1/models") == 1
    tokenize_bodies = [body for path, _, body in model_server.requests if path == "/tokenize"]
    assert tokenize_bodies[-1] == {"model": "m", "prompt": "d", "add_special_tokens": False}
    assert model_server.requests[-1][2]["stream_options"] == {"include_usage": True}


async def test_llama_cpp_python_dialect_by_probing(start_server: StartServer) -> None:
    server = await start_server(owned_by="me", tokenize_routes={"/extras/tokenize"})
    async with make_client(server.url) as client:
        assert await client.tokenize("m", "hi") == [104, 105]
        assert client.dialect is LLAMA_CPP
    assert server.requests[-1][2] == {"input": "hi", "model": "m"}


async def test_no_tokenize_route_gives_none(start_server: StartServer) -> None:
    server = await start_server(owned_by="me", tokenize_routes=set())
    async with make_client(server.url) as client:
        assert await client.tokenize("m", "hi") is None
        assert await client.tokenize("m", "again") is None
        assert client.dialect is None
    probes = [path for path, _, _ in server.requests if "tokenize" in path]
    assert len(probes) == 3  # each dialect tried once, never again


async def test_list_models(model_server: FakeModelServer) -> None:
    async with make_client(model_server.url) as client:
        models = await client.list_models()
    assert [(m.id, m.owned_by) for m in models] == [("m", "vllm")]


async def test_api_key_is_never_logged_or_shown(
    model_server: FakeModelServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = make_client(model_server.url)
    async with client:
        await client.tokenize("m", "abc")
        await complete(client, "ok")
        with pytest.raises(ModelServerError) as caught:
            await complete(client, "fail")
    assert API_KEY not in caplog.text
    assert API_KEY not in repr(client.config) and API_KEY not in repr(client)
    assert API_KEY not in str(caught.value)


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_tls_failure_mentions_the_ca_bundle(
    tmp_path: Path, start_server: StartServer
) -> None:
    cert, key = _self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = await start_server(context)
    async with make_client(server.url) as client:
        with pytest.raises(ModelUnreachable) as caught:
            await client.list_models()
    assert caught.value.tls and "ca_bundle" in str(caught.value)
    async with make_client(server.url, ca_bundle=cert) as trusted:
        assert [m.id for m in await trusted.list_models()] == ["m"]
