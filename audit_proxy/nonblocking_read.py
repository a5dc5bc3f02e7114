"""Reading what a peer already sent, without waiting for more: how the SIEM sinks tell a
collector that hung up (or, over RELP, ended the session) from one with nothing to say."""

from __future__ import annotations

import socket
import ssl


def read_waiting(sock: socket.socket) -> bytes | None:
    """What the peer sent that is waiting to be read: None when nothing is (under TLS, also
    when what came was a TLS message of its own, a session ticket say), b"" when it hung up.
    Raises OSError as `recv` does (a reset; under TLS, an alert). The socket keeps its timeout.
    """
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        return sock.recv(4096)
    except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
        return None
    finally:
        sock.settimeout(timeout)
