"""The STOMP 1.2 codec shared by the daemon and the simulator, against VDSM's framing rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.vdsm.stomp import HEARTBEAT, Frame, FrameParser, StompError, encode_frame


def parse_all(data: bytes, chunk: int | None = None, **kwargs: int) -> list[Frame]:
    parser = FrameParser(**kwargs)
    if chunk is None:
        return parser.feed(data)
    frames: list[Frame] = []
    for i in range(0, len(data), chunk):
        frames += parser.feed(data[i : i + chunk])
    return frames


def test_layout_matches_vdsm() -> None:
    assert encode_frame(Frame("CONNECTED", {"version": "1.2", "heart-beat": "0,0"})) == (
        b"CONNECTED\nversion:1.2\nheart-beat:0,0\n\n\0"
    )
    assert encode_frame(Frame("ERROR", {}, b"Version unsupported")) == (
        b"ERROR\ncontent-length:19\n\nVersion unsupported\0"
    )
    message = Frame(
        "MESSAGE",
        {"destination": "d", "content-type": "application/json", "subscription": "s"},
        b"{}",
    )
    assert encode_frame(message) == (
        b"MESSAGE\ndestination:d\ncontent-type:application/json\nsubscription:s\n"
        b"content-length:2\n\n{}\0"
    )


def test_content_length_is_rewritten_in_place() -> None:
    frame = Frame("MESSAGE", {"subscription": "s", "content-length": "999", "x": "y"}, b"abc")
    assert encode_frame(frame) == b"MESSAGE\nsubscription:s\ncontent-length:3\nx:y\n\nabc\0"
    assert encode_frame(Frame("SEND", {"content-length": "7"})).endswith(b"content-length:0\n\n\0")


def test_header_escaping_round_trip() -> None:
    headers = {"a:b": "c\\d\ne\rf:g", "plain": "value"}
    data = encode_frame(Frame("SEND", headers, b"x"))
    assert b"a\\cb:c\\\\d\\ne\\rf\\cg\n" in data
    (frame,) = parse_all(data)
    assert frame == Frame("SEND", headers | {"content-length": "1"}, b"x")


def test_heartbeats_and_crlf() -> None:
    parser = FrameParser()
    frames = parser.feed(b"\n\r\n" + b"SEND\r\ndestination:q\r\n\r\nbody\0" + HEARTBEAT * 3)
    assert frames == [Frame("SEND", {"destination": "q"}, b"body")]
    assert parser.heartbeats == 5
    assert parser.buffered == 0


def test_body_without_length_ends_at_nul_and_binary_body_with_length() -> None:
    data = b"SEND\ndestination:q\n\nab\0" + b"SEND\ncontent-length:3\n\n\0\0\0\0"
    frames = parse_all(data, chunk=1)
    assert [f.body for f in frames] == [b"ab", b"\0\0\0"]


def test_repeated_header_keeps_first_value() -> None:
    (frame,) = parse_all(b"SEND\nfoo:1\nfoo:2\n\n\0")
    assert frame.headers == {"foo": "1"}


def test_negative_content_length_reads_to_nul() -> None:
    (frame,) = parse_all(b"SEND\ncontent-length:-1\n\nabc\0")
    assert frame.body == b"abc"


def test_incomplete_frame_waits() -> None:
    parser = FrameParser()
    assert parser.feed(b"SEND\ndestination:q\n") == []
    assert parser.feed(b"content-length:4\n\nab") == []
    assert parser.feed(b"cd") == []
    assert parser.feed(b"\0SEN") == [
        Frame("SEND", {"destination": "q", "content-length": "4"}, b"abcd")
    ]
    assert parser.feed(b"D\n\n\0") == [Frame("SEND", {}, b"")]


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"SEND\nkey:va:lue\n\n\0", "illegal character"),
        (b"SEND\nkey:bad\\tescape\n\n\0", "invalid escape"),
        (b"SEND\nno-colon-here\n\n\0", "without ':'"),
        (b"SEND\ncontent-length:abc\n\n\0", "bad content-length"),
        (b"SEND\ncontent-length:2\n\nabc\0", "NULL byte"),
        (b"SE:ND\n\n\0", "illegal character"),
        (b"SEND\nkey:\xff\xfe\n\n\0", "not UTF-8"),
    ],
)
def test_malformed(data: bytes, why: str) -> None:
    with pytest.raises(StompError, match=why):
        parse_all(data)


def test_oversized_frames_are_refused_early() -> None:
    # Announced too big: refused before any body byte arrives.
    with pytest.raises(StompError, match="exceeds"):
        FrameParser(max_frame_size=1000).feed(b"SEND\ncontent-length:1001\n\n")
    # Streamed without NUL: refused once the limit is passed, not buffered forever.
    parser = FrameParser(max_frame_size=1000)
    parser.feed(b"SEND\n\n")
    with pytest.raises(StompError, match="exceeds"):
        for _ in range(20):
            parser.feed(b"x" * 100)
    # Headers that never end.
    parser = FrameParser(max_frame_size=1000)
    with pytest.raises(StompError, match="exceeds"):
        for _ in range(20):
            parser.feed(b"h:" + b"v" * 100 + b"\n")
    # A frame exactly at the limit passes.
    body = b"y" * 900
    assert parse_all(encode_frame(Frame("SEND", {}, body)), max_frame_size=1000)[0].body == body


_text = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\0"), max_size=20
)


@given(
    command=st.sampled_from(["SEND", "MESSAGE", "SUBSCRIBE", "ERROR"]),
    headers=st.dictionaries(_text.filter(bool), _text, max_size=5),
    body=st.binary(max_size=200),
    chunk=st.integers(min_value=1, max_value=64),
    beats=st.integers(min_value=0, max_value=3),
)
def test_round_trip_any_chunking(
    command: str, headers: dict[str, str], body: bytes, chunk: int, beats: int
) -> None:
    headers.pop("content-length", None)
    frame = Frame(command, headers, body)
    data = (HEARTBEAT * beats + encode_frame(frame)) * 2
    parsed = parse_all(data, chunk=chunk)
    expected = dict(headers)
    if body:
        expected["content-length"] = str(len(body))
    assert parsed == [Frame(command, expected, body)] * 2
