"""The proxy as one ASGI app: access log → routing → auth → policy → audit → forward."""

from __future__ import annotations

import json
import logging

from audit_proxy.access_log import AccessLog
from audit_proxy.asgi import ASGIApp, Receive, Scope, Send, send_error, send_json
from audit_proxy.audit import Audit
from audit_proxy.auth import Authenticate
from audit_proxy.checkpoints import Signer, SigningKeyError
from audit_proxy.config import ProxyConfig
from audit_proxy.export import ProofRoutes
from audit_proxy.forward import Upstream
from audit_proxy.keys import KeyStore
from audit_proxy.policy import DEFAULT_POLICY, ApplyPolicy, EnforceBlock, Policy, load_policy
from audit_proxy.store import AuditStore, AuditStoreUnavailable

log = logging.getLogger("bastion.proxy")

AUDITED_ROUTES = frozenset(
    {
        ("POST", "/v1/completions"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/tokenize"),
        ("POST", "/extras/tokenize"),
    }
)
# Authenticated, but not model-bound: nothing of the user's goes to the model.
PLAIN_ROUTES = frozenset({("GET", "/v1/models")})
_KNOWN_PATHS = frozenset(path for _, path in AUDITED_ROUTES | PLAIN_ROUTES)
_HEALTH = json.dumps({"status": "ok"}).encode()


class ProxyApp:
    """Routes requests to the layers; owns the lifespan of the upstream pool and the stores."""

    def __init__(
        self,
        keys: KeyStore,
        store: AuditStore,
        upstream: Upstream,
        policy: Policy = DEFAULT_POLICY,
    ) -> None:
        self.keys = keys
        self.store = store
        self.upstream = upstream
        self.policy = policy
        # The policy rewrites the body before audit records it; a block is answered only after
        # the blocked request is on the record.
        self._audited: ASGIApp = Authenticate(
            ApplyPolicy(Audit(EnforceBlock(upstream), store), policy), keys
        )
        self._plain: ASGIApp = Authenticate(upstream, keys)
        self._audit_admin: ASGIApp = Authenticate(ProofRoutes(store), keys)
        self._http: ASGIApp = AccessLog(self._route)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = (scope["method"], scope["path"])
        if route in AUDITED_ROUTES:
            await self._audited(scope, receive, send)
        elif route in PLAIN_ROUTES:
            await self._plain(scope, receive, send)
        elif scope["path"].startswith("/v1/audit/"):
            await self._audit_admin(scope, receive, send)
        elif route == ("GET", "/healthz"):
            await send_json(send, 200, _HEALTH)
        elif scope["path"] in _KNOWN_PATHS:
            await send_error(
                send,
                405,
                f"{scope['method']} is not allowed on {scope['path']}",
                "invalid_request_error",
                "method_not_allowed",
            )
        else:
            await send_error(
                send,
                404,
                f"no route {scope['path']} on the Bastion proxy",
                "invalid_request_error",
                "not_found",
            )

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.upstream.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.upstream.close()
                self.store.close()
                self.keys.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def build_app(config: ProxyConfig) -> ProxyApp:
    """Open the stores in `config.data_dir` and wire the layers.

    Raises `PolicyError` for a bad policy file and `AuditStoreUnavailable`.
    """
    policy = load_policy(config.policy_file) if config.policy_file else DEFAULT_POLICY
    keys = KeyStore(config.keys_db)
    try:
        signer = Signer.load_or_create(config.data_dir)
    except SigningKeyError as exc:
        raise AuditStoreUnavailable(str(exc)) from exc
    store = AuditStore(config.audit_db, signer=signer)
    upstream = Upstream(
        config.upstream_url,
        config.upstream_api_key,
        config.connect_timeout_s,
        config.read_timeout_s,
        config.upstream_max_connections,
    )
    return ProxyApp(keys, store, upstream, policy)
