"""A RELP client session (the Reliable Event Logging Protocol of rsyslog): the collector
acknowledges each syslog message once it has taken it, so the sender knows what arrived, where
plain syslog over TCP or TLS knows only what its own kernel took.

Frames, both ways: TXNR SP COMMAND SP DATALEN [SP DATA] LF. A session opens with `open`
(offering relp_version=0 and the `syslog` command), carries each message as a `syslog` command
and ends with `close`. The collector answers every command with `rsp`, under the same TXNR,
whose data starts with a status ("200 OK"); it may also say `serverclose` (TXNR 0) and hang up.
"""

from __future__ import annotations

import socket

from audit_proxy.nonblocking_read import read_waiting

WINDOW = 100  # commands awaiting their answer at once (librelp's own default is 128)
MAX_FRAME = 16 * 1024 * 1024
_MAX_TXNR = 999_999_999
_OFFER = b"relp_version=0\nrelp_software=bastion-proxy\ncommands=syslog"


class RelpError(OSError):
    """The collector refused a command, ended the session, or broke the protocol."""


class RelpSession:
    """One RELP session over a connected (possibly TLS) socket with a timeout set."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._timeout_s = sock.gettimeout()
        self._buffer = b""
        self._txnr = 0

    def open(self) -> None:
        """Offer the session; RelpError when the collector does not take `syslog` commands."""
        answer = self._answers([self._command(b"open", _OFFER)])[0]
        if b"commands=syslog" not in answer:
            raise RelpError(f"the collector does not take syslog over RELP ({_text(answer)})")

    def send(self, messages: list[bytes]) -> None:
        """Send every message and return once the collector has acknowledged each of them;
        RelpError (or OSError, or a timeout) otherwise, after which the session is unusable."""
        for start in range(0, len(messages), WINDOW):
            txnrs = [self._command(b"syslog", m) for m in messages[start : start + WINDOW]]
            self._answers(txnrs)

    def close(self) -> None:
        """End the session the way RELP asks: `close`, answered before the collector hangs up."""
        self._answers([self._command(b"close", b"")])

    def ended_by_collector(self) -> bool:
        """Whether the collector has ended the session (said `serverclose`, or hung up),
        judged from what it already sent; a collector has nothing else to say unasked."""
        try:
            data = read_waiting(self._sock)
        except OSError:
            return True
        if data is None:
            return False
        self._buffer += data
        return data == b"" or b"serverclose" in self._buffer

    def _command(self, command: bytes, data: bytes) -> int:
        self._txnr = self._txnr % _MAX_TXNR + 1
        head = b"%d %s %d" % (self._txnr, command, len(data))
        self._sock.sendall(head + (b" " + data if data else b"") + b"\n")
        return self._txnr

    def _answers(self, txnrs: list[int]) -> list[bytes]:
        """The data of the answers to `txnrs`, in their order; RelpError on any but 200."""
        waiting = set(txnrs)
        answers: dict[int, bytes] = {}
        while waiting:
            try:
                txnr, command, data = self._frame()
            except TimeoutError:
                raise RelpError(
                    f"the collector acknowledged {len(txnrs) - len(waiting)} of {len(txnrs)} "
                    f"commands within {self._timeout_s:g} s; the rest are sent again"
                ) from None
            if command == b"serverclose":
                raise RelpError("the collector ended the RELP session")
            if command != b"rsp" or txnr not in waiting:
                raise RelpError(f"unexpected RELP frame {txnr} {command!r} from the collector")
            if not data.startswith(b"200"):
                raise RelpError(f"the collector refused command {txnr}: {_text(data)}")
            waiting.discard(txnr)
            answers[txnr] = data
        return [answers[txnr] for txnr in txnrs]

    def _frame(self) -> tuple[int, bytes, bytes]:
        """The next frame the collector sent: (txnr, command, data)."""
        while True:
            parsed = _parse(self._buffer)
            if parsed is not None:
                txnr, command, data, used = parsed
                self._buffer = self._buffer[used:]
                return txnr, command, data
            chunk = self._sock.recv(65536)
            if not chunk:
                raise RelpError("the collector closed the connection mid-session")
            self._buffer += chunk


def _parse(buffer: bytes) -> tuple[int, bytes, bytes, int] | None:
    """A whole frame at the start of `buffer`: (txnr, command, data, bytes used), or None."""
    parts = buffer.split(b" ", 3)
    if len(parts) < 3 or (len(parts) == 3 and b"\n" not in parts[2]):
        if len(buffer) > 64:
            raise RelpError(f"not a RELP frame: {buffer[:64]!r}")
        return None
    txnr, command = parts[0], parts[1]
    length_field = parts[2].split(b"\n", 1)[0]
    if not (txnr.isdigit() and length_field.isdigit()):
        raise RelpError(f"not a RELP frame: {buffer[:64]!r}")
    length = int(length_field)
    if length > MAX_FRAME:
        raise RelpError(f"a RELP frame of {length} bytes is more than this client reads")
    start = len(txnr) + len(command) + len(length_field) + 2
    if length == 0:
        end = start  # no data: the trailer follows the length
    else:
        start += 1  # the space before the data
        end = start + length
    if len(buffer) < end + 1:
        return None
    if buffer[end : end + 1] != b"\n":
        raise RelpError(f"a RELP frame without its trailer: {buffer[:64]!r}")
    return int(txnr), command, buffer[start:end], end + 1


def _text(data: bytes) -> str:
    return data.split(b"\n", 1)[0].decode("utf-8", "replace")
