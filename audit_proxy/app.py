"""The proxy as one ASGI app: access log and metrics → routing → auth → roles → policy → audit →
forward."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from audit_proxy.access_log import log_access
from audit_proxy.activity import Activity
from audit_proxy.asgi import ASGIApp, Receive, Scope, Send, send_error, send_json
from audit_proxy.audit import Audit, feature_of
from audit_proxy.auth import Authenticate
from audit_proxy.authorize import AnswerDenial, Authorize, RequireAdmin
from audit_proxy.checkpoints import Signer, SigningKeyError
from audit_proxy.config import ConfigError, ProxyConfig
from audit_proxy.export import ProofRoutes
from audit_proxy.fim_suffix import FimSuffix, FimTemplates, upstream_client_config
from audit_proxy.forward import Upstream
from audit_proxy.key_rotation import RotateKeyRoute
from audit_proxy.keys import KeyStore
from audit_proxy.metrics import CountRequests, MetricsEndpoint
from audit_proxy.observe import Observe
from audit_proxy.policy import DEFAULT_POLICY, ApplyPolicy, EnforceBlock, Policy, load_policy
from audit_proxy.ratelimit import RateLimiter
from audit_proxy.roles import (
    BUILTIN_ROLES,
    ROLES_FILE_NAME,
    RoleBook,
    resolve_roles_file,
    roles_for,
)
from audit_proxy.roles_reload import LiveRoles
from audit_proxy.shared_limits import SharedLimits
from audit_proxy.siem import SiemConfigError, SiemForwarder, SyslogTls, build_forwarder
from audit_proxy.store import AuditStore, AuditStoreUnavailable, sign_before_stopping

if TYPE_CHECKING:
    from audit_proxy.pg_store import PostgresAuditStore

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
_AUDIT_PREFIX = "/v1/audit/"
_ROTATE_KEY_PATH = "/v1/audit/rotate-key"
_METRICS_PATH = "/metrics"
_HEALTH = json.dumps({"status": "ok"}).encode()


class ProxyApp:
    """Routes requests to the layers; owns the lifespan of the upstream pool and the stores."""

    def __init__(
        self,
        keys: KeyStore,
        store: AuditStore | PostgresAuditStore,
        upstream: Upstream,
        policy: Policy = DEFAULT_POLICY,
        fim: FimTemplates | None = None,
        siem: SiemForwarder | None = None,
        roles: RoleBook = BUILTIN_ROLES,
        limiter: RateLimiter | None = None,
        shared_limits: SharedLimits | None = None,
        evidence_key: bytes | Callable[[], bytes] | None = None,
        data_dir: Path | None = None,
    ) -> None:
        self.keys = keys
        self.store = store
        # The server counts its exchanges here; the SQLite store files its records between them.
        self.activity = Activity()
        if isinstance(store, AuditStore):
            store.activity = self.activity
        self.upstream = upstream
        self.policy = policy
        self.fim = fim
        self.siem = siem
        # The policy rewrites the body before audit records it; a block is answered only after
        # the blocked request is on the record.
        checked: ASGIApp = ApplyPolicy(Audit(EnforceBlock(upstream), store), policy, evidence_key)
        # `suffix` becomes the model's FIM prompt before the policy scans it and audit records it.
        if fim is not None:
            checked = FimSuffix(checked, fim)
        # A request the role refuses is recorded like any other, then answered, never forwarded.
        denied = ApplyPolicy(Audit(AnswerDenial(), store), policy, evidence_key)
        self.roles = roles
        self.shared_limits = shared_limits
        self._audited: ASGIApp = Authenticate(
            Authorize(checked, denied, roles, limiter or RateLimiter()), keys
        )
        self._plain: ASGIApp = Authenticate(upstream, keys)
        self._audit_admin: ASGIApp = Authenticate(RequireAdmin(ProofRoutes(store), roles), keys)
        # The signing key lives in the data dir: without one there is nothing to rotate.
        self._rotate_key: ASGIApp = (
            Authenticate(RequireAdmin(RotateKeyRoute(store, data_dir), roles), keys)
            if data_dir is not None
            else self._audit_admin
        )
        self._metrics: ASGIApp = Authenticate(RequireAdmin(MetricsEndpoint(), roles), keys)
        count_requests = CountRequests(
            routes=_KNOWN_PATHS | {"/healthz", _METRICS_PATH},
            prefixes=(_AUDIT_PREFIX,),
            feature_of=feature_of,
            featured=frozenset(path for _, path in AUDITED_ROUTES),
        )
        self._http: ASGIApp = Observe(self._route, [log_access, count_requests])

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
        elif scope["path"] == _ROTATE_KEY_PATH:
            await self._rotate_key(scope, receive, send)
        elif scope["path"].startswith(_AUDIT_PREFIX):
            await self._audit_admin(scope, receive, send)
        elif scope["path"] == _METRICS_PATH:
            await self._metrics(scope, receive, send)
        elif route == ("GET", "/healthz"):
            await send_json(send, 200, self._health())
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

    def _health(self) -> bytes:
        if self.siem is None and self.shared_limits is None:
            return _HEALTH
        health: dict[str, object] = {"status": "ok"}
        if self.siem is not None:
            health["siem"] = self.siem.status()
        if self.shared_limits is not None:
            health["rate_limits"] = self.shared_limits.status()
        return json.dumps(health).encode()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.upstream.start()
                if self.siem is not None:
                    self.siem.start()
                if self.shared_limits is not None:
                    await self.shared_limits.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.shared_limits is not None:
                    await self.shared_limits.stop()
                await self.upstream.close()
                if self.fim is not None:
                    await self.fim.close()
                if self.siem is not None:
                    # Its last pass ships what the final requests appended, under a checkpoint
                    # signed now (closing the store would sign the same one, too late for it).
                    await asyncio.to_thread(sign_before_stopping, self.store)
                    await asyncio.to_thread(self.siem.stop)
                self.store.close()
                self.keys.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def open_audit_store(config: ProxyConfig, signer: Signer | None) -> AuditStore | PostgresAuditStore:
    """The audit store `config` names: PostgreSQL at `store_url`, else SQLite in the data dir."""
    if config.store_url is None:
        store = AuditStore(config.audit_db, signer=signer, durability=config.durability)
        try:
            store.claim_writer()  # a second proxy on this data dir stops here, saying why
        except AuditStoreUnavailable:
            store.close()
            raise
        return store
    try:
        from audit_proxy.pg_store import PostgresAuditStore
    except ImportError as exc:
        raise AuditStoreUnavailable(
            f"store_url needs psycopg ({exc}); install Bastion with the postgres extra: "
            "pip install 'bastion[postgres]'"
        ) from None
    password = config.store_password.get_secret_value() if config.store_password else None
    return PostgresAuditStore(config.store_url, password, signer=signer, key_dir=config.data_dir)


def build_app(config: ProxyConfig) -> ProxyApp:
    """Open the stores in `config.data_dir` and wire the layers.

    Raises `PolicyError` for a bad policy file, `ConfigError` for a SIEM sink that cannot open
    (and `RolesError`, one, for a bad roles file), and `AuditStoreUnavailable`.
    """
    policy = load_policy(config.policy_file) if config.policy_file else DEFAULT_POLICY
    keys = KeyStore(config.keys_db)
    roles = roles_for(config.roles_file, config.data_dir)
    roles.check_keys(keys.list())
    # Edits to the roles file apply while the proxy runs; without one, a roles.toml that
    # appears in the data dir is picked up too.
    watched = resolve_roles_file(config.roles_file, config.data_dir) or (
        config.data_dir / ROLES_FILE_NAME
    )
    live = LiveRoles(watched, roles, keys.list)
    try:
        signer = Signer.load_or_create(config.data_dir)
    except SigningKeyError as exc:
        raise AuditStoreUnavailable(str(exc)) from exc
    store = open_audit_store(config, signer)
    upstream = Upstream(
        config.upstream_url,
        config.upstream_api_key,
        config.connect_timeout_s,
        config.read_timeout_s,
        config.upstream_max_connections,
        config.upstream_ca_file,
    )
    fim = FimTemplates(
        upstream_client_config(
            config.upstream_url,
            config.upstream_api_key,
            config.upstream_ca_file,
            config.connect_timeout_s,
        ),
        config.fim_templates,
    )
    try:
        siem = build_forwarder(
            store,
            config.data_dir,
            store.signer.log_id if store.signer is not None else None,
            config.siem_jsonl_path,
            config.siem_syslog_url,
            config.siem_max_backoff_s,
            # Replicas of one PostgreSQL log elect the one that ships (see audit_proxy.siem).
            None if isinstance(store, AuditStore) else store.siem_coordination(),
            SyslogTls(
                config.siem_syslog_ca_file, config.siem_syslog_certfile, config.siem_syslog_keyfile
            ),
        )
    except SiemConfigError as exc:
        store.close()
        raise ConfigError(str(exc)) from None
    except OSError as exc:
        store.close()
        raise ConfigError(
            f"siem_jsonl_path: cannot open {config.siem_jsonl_path} for appending "
            f"({exc.strerror}); point it at a writable file, or '-' for stdout"
        ) from None
    limiter = RateLimiter()
    # Replicas of one PostgreSQL log share their users' rate limits.
    shared = (
        None
        if isinstance(store, AuditStore)
        else SharedLimits(limiter, store.usage_board(), config.rate_limit_sync_s)
    )
    return ProxyApp(
        keys,
        store,
        upstream,
        policy,
        fim,
        siem,
        live,
        limiter,
        shared,
        # The evidence key follows the store's signer through a rotation.
        lambda: (store.signer or signer).evidence_key(),
        config.data_dir,
    )
