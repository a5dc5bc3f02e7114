"""Typed errors for talking to a model server; each message says what failed and what to do."""

from __future__ import annotations


class ModelError(Exception):
    """Base class: a model call failed. `str(error)` is meant for the user."""


class ModelUnreachable(ModelError):
    """No connection: refused, DNS failure, or TLS handshake failure."""

    def __init__(self, url: str, reason: str, *, tls: bool = False) -> None:
        self.url = url
        self.tls = tls
        if tls:
            hint = (
                "The TLS handshake failed. If the server uses a private certificate authority, "
                "point the CA bundle setting (ca_bundle) at its PEM file."
            )
        else:
            hint = "Check that the server is running and that the URL, host and port are right."
        super().__init__(f"Cannot reach the model server at {url}: {reason}. {hint}")


class ModelAuthError(ModelError):
    """The server refused the credentials (HTTP 401 or 403)."""

    def __init__(self, url: str, status: int, detail: str = "") -> None:
        self.url = url
        self.status = status
        what = "rejected the API key" if status == 401 else "denied access"
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"The model server at {url} {what} (HTTP {status}){extra}. "
            "Check the API key setting and that this key is allowed to use the model."
        )


class ModelServerError(ModelError):
    """The server answered with a non-2xx status other than 401/403."""

    def __init__(self, url: str, status: int, body: str = "") -> None:
        self.url = url
        self.status = status
        self.body = body
        excerpt = f": {body}" if body else ""
        if status == 404:
            hint = "Check the server URL and the model name (see /v1/models)."
        elif status >= 500:
            hint = "The server failed; see its log."
        else:
            hint = "The server rejected the request; see the message above."
        super().__init__(f"The model server at {url} answered HTTP {status}{excerpt}. {hint}")


class ModelTimeout(ModelError):
    """The server did not answer (or stalled mid-stream) within the configured timeout."""

    def __init__(self, url: str, phase: str, seconds: float | None) -> None:
        self.url = url
        self.phase = phase
        self.seconds = seconds
        limit = f" within {seconds:g}s" if seconds is not None else ""
        super().__init__(
            f"The model server at {url} did not {phase}{limit}. "
            "It may be overloaded or still loading the model; try again, or raise the timeout."
        )


class MalformedStream(ModelError):
    """The server's answer could not be understood, or the stream was cut short."""

    def __init__(self, reason: str, url: str | None = None) -> None:
        self.url = url
        self.reason = reason
        where = f" at {url}" if url else ""
        super().__init__(
            f"The answer from the model server{where} was malformed: {reason}. "
            "Check that the URL points at an OpenAI-compatible server (vLLM, llama.cpp) "
            "and that nothing between us rewrites or truncates the stream."
        )
