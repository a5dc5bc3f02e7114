"""Incremental Server-Sent Events decoding (the `data:` payloads of an OpenAI-style stream).

Follows the WHATWG event-stream rules that matter here: lines end in CRLF, LF or CR; a blank line
ends an event; `:` starts a comment; several `data:` lines join with newlines; one space after the
colon is dropped. Works on bytes, so a UTF-8 character split across chunks is never broken.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

from .errors import MalformedStream

DONE = "[DONE]"
_BOM = b"\xef\xbb\xbf"


class SSEDecoder:
    """Feed raw bytes as they arrive; get back the data payloads of every completed event."""

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []
        self._has_data = False
        self._started = False
        self._pending_cr = False

    def feed(self, chunk: bytes) -> list[str]:
        """Add bytes; return the `data` payloads of the events this chunk completed."""
        if not chunk:
            return []
        if self._pending_cr:
            # The previous chunk ended in CR: a LF starting this one belongs to that line break.
            self._pending_cr = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
        buffer = self._buffer + chunk
        if not self._started:
            if len(buffer) < len(_BOM) and _BOM.startswith(buffer):
                self._buffer = buffer  # could still be the start of a byte-order mark
                return []
            self._started = True
            buffer = buffer.removeprefix(_BOM)
        events: list[str] = []
        start = 0
        length = len(buffer)
        while start < length:
            cr = buffer.find(b"\r", start)
            lf = buffer.find(b"\n", start)
            if cr == -1 and lf == -1:
                break
            if cr == -1 or (lf != -1 and lf < cr):
                end, next_start = lf, lf + 1
            else:
                end = cr
                if cr + 1 < length:
                    next_start = cr + 2 if buffer[cr + 1 : cr + 2] == b"\n" else cr + 1
                else:
                    next_start = cr + 1
                    self._pending_cr = True
            self._line(buffer[start:end], events)
            start = next_start
        self._buffer = buffer[start:]
        return events

    @property
    def pending(self) -> bool:
        """Whether bytes of an unfinished event are buffered (the stream stopped mid-event)."""
        return bool(self._buffer) or self._has_data

    def _line(self, line: bytes, events: list[str]) -> None:
        if not line:
            if self._has_data:
                events.append(b"\n".join(self._data).decode("utf-8", errors="replace"))
            self._data = []
            self._has_data = False
            return
        if line.startswith(b":"):
            return
        name, sep, value = line.partition(b":")
        if sep and value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            self._data.append(value)
            self._has_data = True
        # `event`, `id`, `retry` and unknown fields carry nothing an OpenAI stream needs.


async def iter_sse_data(
    byte_stream: AsyncIterator[bytes], *, require_done: bool = True
) -> AsyncGenerator[str, None]:
    """Yield each event's data until `[DONE]`.

    Raises MalformedStream when the bytes end before `[DONE]` and `require_done` is set: both vLLM
    and llama.cpp always send it, so its absence means the stream was cut.
    """
    decoder = SSEDecoder()
    async for chunk in byte_stream:
        for data in decoder.feed(chunk):
            if data.strip() == DONE:
                return
            yield data
    if require_done:
        raise MalformedStream("the stream ended before [DONE]")
