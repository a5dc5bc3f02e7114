"""The authentication layer: a valid user key or a 401, before anything else happens."""

from __future__ import annotations

from audit_proxy.asgi import ASGIApp, Receive, Scope, Send, header, send_error
from audit_proxy.keys import KeyStore

PRINCIPAL = "bastion.principal"

_CHALLENGE = [(b"www-authenticate", b'Bearer realm="bastion"')]


def bearer_token(scope: Scope) -> str | None:
    """The token of an `Authorization: Bearer ...` header, or None."""
    value = header(scope, b"authorization")
    if value is None:
        return None
    scheme, _, token = value.decode("latin-1").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class Authenticate:
    """Puts the key's `Principal` in the scope, or answers 401 without calling the next layer."""

    def __init__(self, app: ASGIApp, keys: KeyStore) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = bearer_token(scope)
        if token is None:
            await send_error(
                send,
                401,
                "missing API key: send 'Authorization: Bearer <key>'; "
                "an admin issues keys with 'bastion keys create NAME'",
                "authentication_error",
                "missing_api_key",
                _CHALLENGE,
            )
            return
        principal = self.keys.verify(token)
        if principal is None:
            await send_error(
                send,
                401,
                "invalid, revoked or expired API key; ask an admin for a new one",
                "authentication_error",
                "invalid_api_key",
                _CHALLENGE,
            )
            return
        scope[PRINCIPAL] = principal
        await self.app(scope, receive, send)
