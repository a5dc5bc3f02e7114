"""The audit proxy: authenticates users, records every model-bound request, relays to the model."""

from audit_proxy.app import ProxyApp, build_app
from audit_proxy.config import ConfigError, ProxyConfig, load_config
from audit_proxy.keys import KeyInfo, KeyStore, Principal
from audit_proxy.server import serve
from audit_proxy.store import (
    AuditStore,
    AuditStoreUnavailable,
    OutcomeRecord,
    RequestRecord,
    TokenUsage,
)

__all__ = [
    "AuditStore",
    "AuditStoreUnavailable",
    "ConfigError",
    "KeyInfo",
    "KeyStore",
    "OutcomeRecord",
    "Principal",
    "ProxyApp",
    "ProxyConfig",
    "RequestRecord",
    "TokenUsage",
    "build_app",
    "load_config",
    "serve",
]
