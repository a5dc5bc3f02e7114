"""RELP frames as the client reads them: whole, cut anywhere, several in one read, or garbage."""

from __future__ import annotations

import pytest

from audit_proxy.relp import RelpError, _parse

OPEN_ANSWER = (
    b"1 rsp 93 200 OK\nrelp_version=0\nrelp_software=librelp,1.11.0,http://librelp.adiscon.com"
    b"\ncommands=syslog\n"
)


def test_a_frame_whose_data_holds_newlines_is_read_by_its_length() -> None:
    assert _parse(OPEN_ANSWER) == (1, b"rsp", OPEN_ANSWER[len(b"1 rsp 93 ") : -1], len(OPEN_ANSWER))


def test_frames_without_data_and_several_in_one_read() -> None:
    buffer = b"4 rsp 0\n0 serverclose 0\n2 rsp 6 200 OK\n"
    frames = []
    while buffer:
        parsed = _parse(buffer)
        assert parsed is not None
        frames.append(parsed[:3])
        buffer = buffer[parsed[3] :]
    assert frames == [(4, b"rsp", b""), (0, b"serverclose", b""), (2, b"rsp", b"200 OK")]


def test_a_frame_cut_anywhere_waits_for_the_rest() -> None:
    for cut in range(len(OPEN_ANSWER)):
        assert _parse(OPEN_ANSWER[:cut]) is None, cut


@pytest.mark.parametrize(
    "garbage", [b"HTTP/1.1 400 Bad Request\r\n\r\n", b"1 rsp 6 200 OKX", b"x" * 80]
)
def test_what_is_no_relp_frame_is_refused(garbage: bytes) -> None:
    with pytest.raises(RelpError):
        _parse(garbage)
