"""How the server ends once the client has said `exit`, where pygls's own ending falls short.

- The tasks cancelled as the loop stops (an index build, with its progress and status) still
  notify the client. Over the closed stdout each failed send is reported by sending a message
  about it, which fails too: the server spun in that loop instead of exiting. After `exit` the
  protocol sends nothing, and a failed send is never reported by sending.
- `asyncio.run` waits without limit for its worker threads (Python 3.11), so one stuck in a
  system call would keep the process alive after the editor let it go. A timer ends it then.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from pygls.protocol import LanguageServerProtocol

# How long an exiting server may take to stop its work before the process is ended anyway.
EXIT_GRACE_S = 5.0


class QuietAfterExitProtocol(LanguageServerProtocol):
    """pygls's protocol, which drops notifications once the client has said `exit`."""

    exited = False

    def notify(self, method: str, params: Any | None = None) -> None:
        if not self.exited:
            super().notify(method, params)


def end_process_after(seconds: float, returncode: int) -> None:
    """End this process in `seconds` unless it has ended by then; returns at once."""
    timer = threading.Timer(seconds, os._exit, args=(returncode,))
    timer.daemon = True
    timer.start()
