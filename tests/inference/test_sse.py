from collections.abc import AsyncIterator

import pytest

from inference import MalformedStream, SSEDecoder, iter_sse_data


def feed_all(chunks: list[bytes]) -> list[str]:
    decoder = SSEDecoder()
    out: list[str] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    return out


def test_one_event_per_blank_line() -> None:
    assert feed_all([b"data: a\n\ndata: b\n\n"]) == ["a", "b"]


def test_event_split_across_chunks_byte_by_byte() -> None:
    stream = b'data: {"x": 1}\n\ndata: two\n\n'
    assert feed_all([bytes([b]) for b in stream]) == ['{"x": 1}', "two"]


def test_crlf_and_cr_line_endings() -> None:
    assert feed_all([b"data: a\r\n\r\ndata: b\r\rdata: c\n\n"]) == ["a", "b", "c"]


def test_crlf_split_between_chunks_is_one_line_break() -> None:
    assert feed_all([b"data: a\r", b"\n", b"data: b\r\n\r\n"]) == ["a\nb"]


def test_comments_and_other_fields_are_ignored() -> None:
    assert feed_all([b": keep-alive\n\nevent: message\nid: 3\ndata: x\nretry: 5\n\n"]) == ["x"]


def test_multi_line_data_joins_with_newline() -> None:
    assert feed_all([b"data: first\ndata: second\ndata:third\n\n"]) == ["first\nsecond\nthird"]


def test_utf8_character_split_across_chunks() -> None:
    raw = "data: héllo ✓\n\n".encode()
    cut = raw.index("✓".encode()) + 1
    assert feed_all([raw[:cut], raw[cut:]]) == ["héllo ✓"]


def test_byte_order_mark_is_dropped_even_when_split() -> None:
    assert feed_all([b"\xef", b"\xbb\xbfdata: a\n\n"]) == ["a"]


def test_incomplete_event_is_pending_not_returned() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: partial") == []
    assert decoder.pending
    assert decoder.feed(b"\n\n") == ["partial"]
    assert not decoder.pending


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_iter_sse_data_stops_at_done() -> None:
    data = [d async for d in iter_sse_data(_chunks(b"data: a\n\ndata: [DONE]\n\ndata: b\n\n"))]
    assert data == ["a"]


async def test_iter_sse_data_without_done_is_malformed() -> None:
    with pytest.raises(MalformedStream, match=r"\[DONE\]"):
        _ = [d async for d in iter_sse_data(_chunks(b"data: a\n\n"))]
    data = [d async for d in iter_sse_data(_chunks(b"data: a\n\n"), require_done=False)]
    assert data == ["a"]
