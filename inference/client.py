"""The OpenAI-compatible model client: pooled httpx, explicit timeouts, typed errors, streaming.

Every stream is an async generator that holds its HTTP response in `async with`: when the
consumer stops early (`aclose()`, or its task is cancelled) the response is closed at once, the
connection is dropped, and the server stops generating.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from pathlib import Path
from typing import Any, NoReturn

import httpx
from pydantic import BaseModel, ConfigDict, SecretStr, field_validator

from .dialects import Dialect, dialect_for_owner, probe_order
from .errors import (
    MalformedStream,
    ModelAuthError,
    ModelError,
    ModelServerError,
    ModelTimeout,
    ModelUnreachable,
)
from .sse import iter_sse_data
from .types import ChatMessage, ModelInfo

log = logging.getLogger(__name__)

FEATURE_HEADER = "X-Bastion-Feature"
_BODY_EXCERPT = 300
_PROBE_TEXT = "def main():"
# Answers that mean "this server has no such route (or not in this shape)".
_NOT_THIS_DIALECT = frozenset({400, 404, 405, 422, 501})


class ClientConfig(BaseModel):
    """How to reach an OpenAI-compatible server (vLLM, llama.cpp, or the audit proxy)."""

    model_config = ConfigDict(frozen=True)

    base_url: str
    api_key: SecretStr | None = None
    connect_timeout: float = 2.0
    read_timeout: float = 15.0
    ca_bundle: Path | None = None
    verify_tls: bool = True
    max_connections: int = 8

    @field_validator("base_url")
    @classmethod
    def _server_root(cls, value: str) -> str:
        # Accept ".../v1" too: the tokenize routes live beside /v1, not under it.
        root = value.strip().rstrip("/")
        return root.removesuffix("/v1")


def _ssl_context(config: ClientConfig) -> ssl.SSLContext | bool:
    if not config.verify_tls:
        return False
    # The system trust store (where enterprises install their CA), plus the configured bundle.
    context = ssl.create_default_context()
    if config.ca_bundle is not None:
        context.load_verify_locations(cafile=str(config.ca_bundle))
    return context


def _excerpt(body: bytes) -> str:
    text = body.decode("utf-8", errors="replace").strip()
    try:
        payload = json.loads(text)
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        error = payload.get("error", payload.get("detail", payload.get("message")))
        if isinstance(error, dict):
            error = error.get("message", error)
        if error is not None:
            text = str(error)
    text = " ".join(text.split())
    return text if len(text) <= _BODY_EXCERPT else text[:_BODY_EXCERPT] + "…"


def _is_tls_failure(error: BaseException) -> bool:
    seen: BaseException | None = error
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    text = str(error).lower()
    return "certificate" in text or "ssl" in text or "tls" in text


class ModelClient:
    """One pooled connection to a model server; safe to share between concurrent requests."""

    def __init__(self, config: ClientConfig, *, transport: httpx.AsyncBaseTransport | None = None):
        self.config = config
        headers = {"Accept": "application/json"}
        if config.api_key is not None:
            headers["Authorization"] = f"Bearer {config.api_key.get_secret_value()}"
        self._http = httpx.AsyncClient(
            base_url=config.base_url,
            headers=headers,
            timeout=httpx.Timeout(
                connect=config.connect_timeout,
                read=config.read_timeout,
                write=config.read_timeout,
                pool=config.connect_timeout,
            ),
            limits=httpx.Limits(
                max_connections=config.max_connections,
                max_keepalive_connections=config.max_connections,
            ),
            verify=_ssl_context(config),
            transport=transport,
        )
        self._dialect: Dialect | None = None
        self._dialect_known = False
        self._dialect_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"ModelClient(base_url={self.config.base_url!r})"

    @property
    def dialect(self) -> Dialect | None:
        """The server dialect, once detected (None: unknown yet, or no tokenize route)."""
        return self._dialect

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> ModelClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- plain requests ---------------------------------------------------------------------

    async def list_models(self) -> list[ModelInfo]:
        """The models the server serves (`GET /v1/models`)."""
        payload = await self._request_json("GET", "/v1/models", feature="models")
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            raise MalformedStream("/v1/models has no 'data' list", self.config.base_url)
        try:
            return [ModelInfo.model_validate(entry) for entry in data]
        except ValueError as error:
            raise MalformedStream(f"/v1/models entry: {error}", self.config.base_url) from None

    async def tokenize(self, model: str, text: str) -> list[int] | None:
        """Token ids of `text` as the server's tokenizer sees it; None when it cannot tokenize."""
        dialect = await self.detect_dialect(model)
        if dialect is None:
            return None
        payload = await self._request_json(
            "POST",
            dialect.tokenize_path,
            feature="tokenize",
            json_body=dialect.tokenize_body(model, text),
        )
        try:
            return dialect.parse_tokens(payload)
        except ValueError as error:
            raise MalformedStream(f"tokenize answer: {error}", self.config.base_url) from None

    async def detect_dialect(self, model: str) -> Dialect | None:
        """Find (once) which tokenize route the server answers; None when it has none."""
        if self._dialect_known:
            return self._dialect
        async with self._dialect_lock:
            if not self._dialect_known:
                self._dialect = await self._probe_dialect(model)
                self._dialect_known = True
                log.info(
                    "model server %s: dialect %s",
                    self.config.base_url,
                    self._dialect.name if self._dialect else "unknown (no tokenize route)",
                )
        return self._dialect

    async def _probe_dialect(self, model: str) -> Dialect | None:
        hint: Dialect | None = None
        try:
            models = await self.list_models()
        except (ModelServerError, MalformedStream):
            models = []
        for info in models:
            if info.id == model or hint is None:
                hint = dialect_for_owner(info.owned_by) or hint
        for dialect in probe_order(hint):
            try:
                payload = await self._request_json(
                    "POST",
                    dialect.tokenize_path,
                    feature="tokenize",
                    json_body=dialect.tokenize_body(model, _PROBE_TEXT),
                )
                if dialect.parse_tokens(payload):
                    return dialect
            except ModelServerError as error:
                if error.status not in _NOT_THIS_DIALECT and error.status < 500:
                    raise
            except (MalformedStream, ValueError):
                continue
        return None

    # -- streams ----------------------------------------------------------------------------

    async def stream_completion(
        self,
        prompt: str,
        *,
        model: str,
        max_tokens: int,
        temperature: float,
        stop: Sequence[str],
        feature: str,
    ) -> AsyncGenerator[str, None]:
        """Text deltas of a streamed `/v1/completions` for a raw prompt (e.g. FIM)."""
        body = {
            "model": model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stream": True,
            **self._extras(),
        }
        if stop:
            body["stop"] = list(stop)
        async with aclosing(self._stream_choices("/v1/completions", body, feature)) as choices:
            async for choice in choices:
                text = choice.get("text")
                if isinstance(text, str) and text:
                    yield text

    async def stream_chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        model: str,
        max_tokens: int,
        temperature: float,
        stop: Sequence[str],
        feature: str,
    ) -> AsyncGenerator[str, None]:
        """Text deltas of a streamed `/v1/chat/completions`."""
        body = {
            "model": model,
            "messages": [message.model_dump() for message in messages],
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stream": True,
            **self._extras(),
        }
        if stop:
            body["stop"] = list(stop)
        path = "/v1/chat/completions"
        async with aclosing(self._stream_choices(path, body, feature)) as choices:
            async for choice in choices:
                delta = choice.get("delta")
                text = delta.get("content") if isinstance(delta, dict) else None
                if isinstance(text, str) and text:
                    yield text

    def _extras(self) -> dict[str, Any]:
        return self._dialect.completion_extras() if self._dialect is not None else {}

    async def _stream_choices(
        self, path: str, body: dict[str, Any], feature: str
    ) -> AsyncGenerator[dict[str, Any], None]:
        url = self.config.base_url + path
        try:
            async with self._http.stream(
                "POST", path, json=body, headers={FEATURE_HEADER: feature}
            ) as response:
                if not response.is_success:
                    self._raise_status(response.status_code, await response.aread())
                async with aclosing(iter_sse_data(response.aiter_bytes())) as events:
                    async for data in events:
                        for choice in self._choices(data, url):
                            yield choice
        except httpx.HTTPError as error:
            self._raise_transport(error, streaming=True)
        except MalformedStream as error:
            if error.url is None:
                raise MalformedStream(error.reason, url) from None
            raise

    def _choices(self, data: str, url: str) -> list[dict[str, Any]]:
        try:
            event = json.loads(data)
        except ValueError:
            raise MalformedStream(f"a stream event is not JSON: {data[:80]!r}", url) from None
        if not isinstance(event, dict):
            raise MalformedStream(f"a stream event is not an object: {data[:80]!r}", url)
        error = event.get("error")
        if error is not None:
            # vLLM reports failures inside an already started 200 stream this way.
            status = error.get("code") if isinstance(error, dict) else None
            message = error.get("message", error) if isinstance(error, dict) else error
            raise ModelServerError(
                url, status if isinstance(status, int) else 500, str(message)[:_BODY_EXCERPT]
            )
        choices = event.get("choices")
        if choices is None:
            return []
        if not isinstance(choices, list):
            raise MalformedStream("'choices' is not a list", url)
        # Only the first choice: we always ask for n=1. The final usage chunk has no choices.
        return [choice for choice in choices[:1] if isinstance(choice, dict)]

    # -- plumbing -----------------------------------------------------------------------------

    async def _request_json(
        self,
        method: str,
        path: str,
        *,
        feature: str,
        json_body: dict[str, Any] | None = None,
    ) -> Any:
        try:
            response = await self._http.request(
                method, path, json=json_body, headers={FEATURE_HEADER: feature}
            )
        except httpx.HTTPError as error:
            self._raise_transport(error, streaming=False)
        if not response.is_success:
            self._raise_status(response.status_code, response.content)
        try:
            return response.json()
        except ValueError:
            raise MalformedStream(f"{path} did not answer JSON", self.config.base_url) from None

    def _raise_status(self, status: int, body: bytes) -> NoReturn:
        url = self.config.base_url
        if status in (401, 403):
            raise ModelAuthError(url, status, _excerpt(body))
        raise ModelServerError(url, status, _excerpt(body))

    def _raise_transport(self, error: httpx.HTTPError, *, streaming: bool) -> NoReturn:
        url = self.config.base_url
        config = self.config
        if isinstance(error, httpx.ConnectTimeout):
            raise ModelTimeout(url, "accept the connection", config.connect_timeout) from error
        if isinstance(error, httpx.PoolTimeout):
            raise ModelTimeout(
                url, f"free one of its {config.max_connections} connections", config.connect_timeout
            ) from error
        if isinstance(error, httpx.TimeoutException):
            phase = "send the next part of the stream" if streaming else "answer"
            raise ModelTimeout(url, phase, config.read_timeout) from error
        if isinstance(error, httpx.ConnectError):
            tls = _is_tls_failure(error)
            raise ModelUnreachable(url, str(error) or type(error).__name__, tls=tls) from error
        if isinstance(error, httpx.RemoteProtocolError | httpx.ReadError):
            reason = "the server closed the connection before the answer was complete"
            raise MalformedStream(reason, url) from error
        if isinstance(error, httpx.UnsupportedProtocol | httpx.InvalidURL):
            raise ModelUnreachable(url, f"invalid URL ({error})") from error
        raise ModelError(f"Request to the model server at {url} failed: {error}") from error


__all__ = ["FEATURE_HEADER", "ChatMessage", "ClientConfig", "ModelClient", "ModelInfo"]
