"""The language server's log goes to the editor as `window/logMessage`, at each record's level.

Why not stderr: VS Code's language client shows every line a server writes to stderr as an
error, so routine lines ("workspace index: 2 files ...") read as errors in the Bastion output
channel, and those also sent as log messages appeared twice. Records logged on other threads
(indexing, embedding) are handed to the event loop, which owns the connection. Until the
client is attached, and once the loop is gone, records go to stderr as before.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import Callable

from lsprotocol import types

OWN_LOGGERS = ("lsp_server", "index", "inference")
STDERR_FORMAT = "%(asctime)s %(name)s %(message)s"


def message_type(level: int) -> types.MessageType:
    if level >= logging.ERROR:
        return types.MessageType.Error
    if level >= logging.WARNING:
        return types.MessageType.Warning
    if level >= logging.INFO:
        return types.MessageType.Info
    return types.MessageType.Log


class ClientFormatter(logging.Formatter):
    """The message (and traceback); other libraries' records are prefixed with their logger."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info:
            text = f"{text}\n{self.formatException(record.exc_info)}"
        if not record.name.startswith(OWN_LOGGERS):
            text = f"{record.name}: {text}"
        return text


class ClientLogHandler(logging.Handler):
    def __init__(self, send: Callable[[types.LogMessageParams], None]) -> None:
        super().__init__()
        self.setFormatter(ClientFormatter())
        self._send = send
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stderr = logging.StreamHandler(sys.stderr)
        self._stderr.setFormatter(logging.Formatter(STDERR_FORMAT))
        self._sending = threading.local()

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """From now on, records go to the client through `loop`."""
        self._loop = loop

    def detach(self) -> None:
        """The client is gone: from now on, records go to stderr."""
        self._loop = None

    def emit(self, record: logging.LogRecord) -> None:
        loop = self._loop
        if loop is None or loop.is_closed() or getattr(self._sending, "active", False):
            self._stderr.handle(record)  # also what sending itself logs, so it cannot recurse
            return
        params = types.LogMessageParams(
            type=message_type(record.levelno), message=self.format(record)
        )
        if _running_loop() is loop:
            self._send_now(params, record)
            return
        try:
            loop.call_soon_threadsafe(self._send_now, params, record)
        except RuntimeError:  # the loop has stopped
            self._stderr.handle(record)

    def _send_now(self, params: types.LogMessageParams, record: logging.LogRecord) -> None:
        self._sending.active = True
        try:
            self._send(params)
        except Exception:  # no connection to send on: keep the line
            self._stderr.handle(record)
        finally:
            self._sending.active = False


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def configure(send: Callable[[types.LogMessageParams], None]) -> ClientLogHandler:
    """Route all logging through one ClientLogHandler: our loggers at INFO, others at WARNING.

    pygls at INFO would log every message, document text included: code stays out of logs."""
    handler = ClientLogHandler(send)
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
    return handler
