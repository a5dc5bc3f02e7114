"""Running the proxy: `HttpServer` (uvloop + httptools) serving `ProxyApp`."""

from __future__ import annotations

import gc
import logging
import ssl

from audit_proxy.app import build_app
from audit_proxy.config import ConfigError, ProxyConfig
from audit_proxy.forward import upstream_tls_context
from audit_proxy.http_server import HttpServer, run
from audit_proxy.tls_files import (
    TlsFileError,
    load_certificate,
    require_both_or_neither,
)

log = logging.getLogger("bastion.proxy")

# A request allocates a few hundred objects and leaves almost no cycles behind, so the collector
# is asked to look far less often than Python's default of every 700 allocations.
GC_YOUNG_THRESHOLD = 20_000


def configure_logging(level: int = logging.INFO) -> None:
    """One line per event on stderr.

    The format names no source line, thread or process, so records do not collect them: the
    access log writes a record per request, and finding its caller walked the stack each time.
    """
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )


def check_tls_files(config: ProxyConfig) -> ssl.SSLContext | None:
    """The listener's TLS context (None for plain HTTP), once every TLS file is checked.

    Raises `ConfigError`, naming the setting and the file, when a TLS file cannot be used.
    """
    try:
        require_both_or_neither(
            "tls_certfile", config.tls_certfile, "tls_keyfile", config.tls_keyfile,
            "for plain HTTP",
        )  # fmt: skip
        listener: ssl.SSLContext | None = None
        if config.tls_certfile is not None and config.tls_keyfile is not None:
            listener = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            load_certificate(
                listener, "tls_certfile", config.tls_certfile, "tls_keyfile", config.tls_keyfile
            )
        upstream_tls_context(config.upstream_ca_file)  # only to check the bundle before start
    except TlsFileError as exc:
        raise ConfigError(str(exc)) from None
    return listener


def serve(config: ProxyConfig) -> None:
    """Serve until SIGINT/SIGTERM.

    Raises `ConfigError` when a TLS file cannot be used, `AuditStoreUnavailable` if the audit
    store cannot open, and OSError when the address cannot be bound.
    """
    configure_logging()
    listener_tls = check_tls_files(config)
    app = build_app(config)
    server = HttpServer(
        app,
        config.host,
        config.port,
        listener_tls,
        keep_alive_s=30,
        # Open streams get this long to finish on shutdown; then they are cut (and recorded).
        graceful_s=10,
        busy_poll_us=config.busy_poll_us,
        activity=app.activity,
    )
    log.info(
        "bastion proxy on %s://%s:%d -> %s (service key %s); audit store %s",
        "https" if config.tls_certfile else "http",
        config.host,
        config.port,
        config.upstream_url,
        "set" if config.upstream_api_key else "NOT set",
        app.store.where,
    )
    if app.store.signer is not None:
        # Auditors pin this key: `bastion audit public-key`, `bastion audit verify --public-key`.
        log.info("audit log %s, signed by the key in %s", app.store.signer.log_id, config.data_dir)
    freeze_startup_heap()
    run(server, lambda: log.info("listening on %s:%d", config.host, config.port))


def freeze_startup_heap() -> None:
    """Keep the collector off what startup built (modules, the policy, pydantic's models).

    Those objects live as long as the process, yet every full collection walked all of them;
    frozen, a collection walks only what requests made since.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 50, 100)
