"""Running the proxy: uvicorn (uvloop + httptools) serving `ProxyApp`."""

from __future__ import annotations

import importlib.util
import logging

import uvicorn

from audit_proxy.app import ProxyApp, build_app
from audit_proxy.config import ProxyConfig
from audit_proxy.forward import StreamAborted

log = logging.getLogger("bastion.proxy")


class _HideCutStreams(logging.Filter):
    """A cut stream is already logged as one line; uvicorn's traceback would only add noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], StreamAborted))


def configure_logging(level: int = logging.INFO) -> None:
    """One line per event on stderr; the access log is ours, not uvicorn's."""
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    logging.getLogger("uvicorn.error").addFilter(_HideCutStreams())


def uvicorn_config(config: ProxyConfig) -> uvicorn.Config:
    """The uvicorn settings the proxy runs with (also used by tests and the benchmark)."""
    fast = importlib.util.find_spec("uvloop") is not None
    return uvicorn.Config(
        build_app(config),
        host=config.host,
        port=config.port,
        loop="uvloop" if fast else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        timeout_keep_alive=30,
        # Open streams get this long to finish on shutdown; then they are cut (and recorded).
        timeout_graceful_shutdown=10,
    )


def serve(config: ProxyConfig) -> None:
    """Serve until interrupted; raises `AuditStoreUnavailable` if the audit store cannot open."""
    configure_logging()
    uv_config = uvicorn_config(config)
    log.info(
        "bastion proxy on http://%s:%d -> %s (service key %s); audit store %s",
        config.host,
        config.port,
        config.upstream_url,
        "set" if config.upstream_api_key else "NOT set",
        config.audit_db,
    )
    app = uv_config.app
    if isinstance(app, ProxyApp) and app.store.signer is not None:
        # Auditors pin this key: `bastion audit public-key`, `bastion audit verify --public-key`.
        log.info("audit log %s, signed by the key in %s", app.store.signer.log_id, config.data_dir)
    uvicorn.Server(uv_config).run()
