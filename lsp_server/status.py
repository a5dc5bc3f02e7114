"""The `bastion/status` notification: what the editor shows in its status bar."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

STATUS_METHOD = "bastion/status"


class Status(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    connected: bool = False
    proxy_url: str = ""
    model: str | None = None
    completion_mode: str | None = None
    last_error: str | None = None
    indexing_percent: int | None = None
    embedding_percent: int | None = None


class StatusReporter:
    """Holds the current status and sends it whenever it changes."""

    def __init__(self, send: Callable[[dict[str, object]], None]) -> None:
        self._send = send
        self.current = Status()

    def update(self, **changes: object) -> None:
        updated = self.current.model_copy(update=changes)
        if updated != self.current:
            self.current = updated
            self._send(updated.model_dump(by_alias=True))

    def connected(self, **changes: object) -> None:
        self.update(connected=True, last_error=None, **changes)

    def failed(self, error: BaseException) -> None:
        self.update(connected=False, last_error=str(error) or type(error).__name__)
