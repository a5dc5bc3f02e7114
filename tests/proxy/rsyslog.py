"""A real syslog collector for tests: rsyslogd (`scripts/rsyslog.sh` installs it), listening on
127.0.0.1 for syslog over TCP (RFC 6587) or TLS (RFC 5425, its OpenSSL driver) or over RELP
(plain or TLS), and writing each message it takes to a file."""

from __future__ import annotations

import functools
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Literal

from bastion.stack import free_port
from tests.project_scripts import run_script

from .pki import Authority

Protocol = Literal["tcp", "tls", "relp", "relp+tls"]

_GLOBAL = 'global(workDirectory="{work}" maxMessageSize="64k")\n'
_INPUT: dict[Protocol, str] = {
    "tcp": """\
module(load="imtcp")
input(type="imtcp" port="{port}" address="127.0.0.1")
""",
    "tls": """\
global(DefaultNetstreamDriver="ossl" DefaultNetstreamDriverCAFile="{ca}"
       DefaultNetstreamDriverCertFile="{cert}" DefaultNetstreamDriverKeyFile="{key}")
module(load="imtcp" StreamDriver.Name="ossl" StreamDriver.Mode="1"
       StreamDriver.AuthMode="{auth_mode}")
input(type="imtcp" port="{port}" address="127.0.0.1")
""",
    "relp": """\
module(load="imrelp")
input(type="imrelp" port="{port}" address="127.0.0.1")
""",
    "relp+tls": """\
module(load="imrelp" tls.tlslib="openssl")
input(type="imrelp" port="{port}" address="127.0.0.1" tls="on" tls.cacert="{ca}"
      tls.mycert="{cert}" tls.myprivkey="{key}" {relp_auth_mode})
""",
}
_OUTPUT = """\
template(name="whole" type="string" string="%rawmsg%\\n")
if $app-name == "bastion-proxy" then {{
  action(type="omfile" file="{received}" template="whole")
  stop
}}
"""


@functools.cache
def rsyslogd() -> str:
    """rsyslogd's path, installed first where it is missing (once a test session)."""
    return run_script("rsyslog.sh").splitlines()[-1]


class RsyslogCollector:
    """rsyslogd taking `protocol` with a certificate `authority` signed (for TLS); with
    `client_certs`, it takes only senders whose certificate that authority signed."""

    def __init__(
        self,
        directory: Path,
        authority: Authority,
        *,
        client_certs: bool = True,
        protocol: Protocol = "tls",
    ) -> None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.directory = directory
        self.port = free_port()
        self.protocol = protocol
        self.received = directory / "received.log"
        self.stderr = directory / "rsyslogd.err"
        server = authority.issue(f"collector-{self.port}", server=True, hosts=("127.0.0.1",))
        (directory / "work").mkdir(exist_ok=True)
        self.config = directory / "rsyslog.conf"
        self.config.write_text(
            (_GLOBAL + _INPUT[protocol] + _OUTPUT).format(
                ca=authority.cert, cert=server.cert, key=server.key, work=directory / "work",
                auth_mode="x509/certvalid" if client_certs else "anon",
                relp_auth_mode='tls.authmode="certvalid"' if client_certs else "",
                port=self.port,
                received=self.received,
            )
        )  # fmt: skip
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> RsyslogCollector:
        binary = rsyslogd()
        with self.stderr.open("ab") as err:
            self._process = subprocess.Popen(
                [binary, "-n", "-f", str(self.config), "-i", str(self.directory / "pid")],
                stdout=err,
                stderr=err,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"rsyslogd exited:\n{self.stderr.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"rsyslogd did not listen:\n{self.stderr.read_text()}")

    def messages(self) -> list[bytes]:
        """Every message taken so far, in the order it took them."""
        try:
            return self.received.read_bytes().splitlines()
        except FileNotFoundError:
            return []

    def pause(self) -> None:
        """Freeze the collector (SIGSTOP): connections stay open, nothing is read or answered."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def kill(self) -> None:
        """Kill the collector with what it had not processed (SIGKILL), as a crash does."""
        assert self._process is not None
        self._process.kill()
        self._process.wait(20)
        self._process = None

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(20)
            self._process = None
