"""STOMP 1.2 framing shared by the daemon (client side) and the simulator (server side).

Pure bytes in, frames out: no sockets, no asyncio, so both sides and the tests use the very same
encoder and parser. Decoding follows VDSM's `yajsonrpc.stomp.Parser` where it is stricter than
the STOMP 1.2 text, because a frame VDSM would refuse must be refused here too:

* a header value may not contain a raw ``:`` (it must arrive escaped as ``\\c``);
* an unknown escape sequence is an error; repeated headers keep their first value;
* a ``content-length`` that is not an integer is an error, a negative one means "read to NUL";
* a body read by ``content-length`` must be followed by NUL;
* empty lines between frames are heart-beats (``\\n`` or ``\\r\\n``).

Unlike VDSM the parser has a size limit: a peer that announces or streams a frame larger than
``max_frame_size`` gets a `StompError` instead of an ever-growing buffer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

HEARTBEAT = b"\n"
DEFAULT_MAX_FRAME_SIZE = 10 * 1024 * 1024

_ESCAPE_CHARS = re.compile(r"[\\:\r\n]")
_ESCAPE_TABLE = str.maketrans({"\\": "\\\\", ":": "\\c", "\r": "\\r", "\n": "\\n"})
_UNESCAPE = {b"\\\\": b"\\", b"\\c": b":", b"\\r": b"\r", b"\\n": b"\n"}
_ESCAPE_SEQUENCE = re.compile(rb"\\(.)", re.DOTALL)


class StompError(Exception):
    """Malformed or oversized input; the connection it came from cannot be trusted further."""


@dataclass(slots=True)
class Frame:
    command: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def _escape(value: str) -> bytes:
    if _ESCAPE_CHARS.search(value):
        value = value.translate(_ESCAPE_TABLE)
    return value.encode()


def encode_frame(frame: Frame) -> bytes:
    """Serialize one frame.

    As VDSM does: ``content-length`` always states the body size; it stays where the caller put
    it, or is appended after the other headers when there is a body. So CONNECTED and RECEIPT
    carry none while MESSAGE and ERROR do.
    """
    parts = [_escape(frame.command), b"\n"]
    body = frame.body
    length = str(len(body)).encode()
    for key, value in frame.headers.items():
        if key == "content-length":
            parts += (b"content-length:", length, b"\n")
        else:
            parts += (_escape(key), b":", _escape(value), b"\n")
    if body and "content-length" not in frame.headers:
        parts += (b"content-length:", length, b"\n")
    parts += (b"\n", body, b"\0")
    return b"".join(parts)


def encode_head(command: str, headers: dict[str, str]) -> bytes:
    """The start of a frame up to its ``content-length`` value, for `encode_with_head`.

    A server sends the same MESSAGE headers for every reply to one subscription; encoding them
    once keeps escaping and joining off the per-reply path. ``headers`` must not contain
    ``content-length`` (it is what the head ends with).
    """
    if "content-length" in headers:
        raise ValueError("encode_head: content-length is appended by encode_with_head")
    parts = [_escape(command), b"\n"]
    for key, value in headers.items():
        parts += (_escape(key), b":", _escape(value), b"\n")
    parts.append(b"content-length:")
    return b"".join(parts)


def encode_with_head(head: bytes, body: bytes) -> bytes:
    """``encode_frame(Frame(command, headers, body))`` for a non-empty body, given its head."""
    return b"".join((head, str(len(body)).encode(), b"\n\n", body, b"\0"))


def _decode(raw: bytes) -> str:
    if b":" in raw:
        raise StompError(f"{raw!r} contains illegal character ':'")
    if b"\\" in raw:

        def unescape(match: re.Match[bytes]) -> bytes:
            try:
                return _UNESCAPE[match.group(0)]
            except KeyError:
                raise StompError(
                    f"{raw!r} contains invalid escape sequence {match.group(0)!r}"
                ) from None

        raw = _ESCAPE_SEQUENCE.sub(unescape, raw)
    try:
        return raw.decode()
    except UnicodeDecodeError as e:
        raise StompError(f"{raw!r} is not UTF-8: {e}") from None


def _slow_head(block: bytes) -> Frame:
    """Command and headers, piece by piece: exact errors for escapes, ':' and bad UTF-8."""
    lines = block.split(b"\n")
    lines.pop()  # the empty piece after the last header's EOL
    lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        key, sep, value = line.partition(b":")
        if not sep:
            raise StompError(f"header line without ':': {line[:80]!r}")
        headers.setdefault(_decode(key), _decode(value))
    return Frame(_decode(lines[0]), headers)


def _fast_head(block: bytes) -> Frame | None:
    """The common case at once: no escapes, valid UTF-8, well-formed; else None (slow path).

    Decodes the whole block in one go instead of every key and value apart. Anything unusual
    (an escape, a stray ':' in a value or the command, a line without ':', bad UTF-8) returns
    None so that `_slow_head` raises exactly the error it always raised.
    """
    if b"\\" in block:
        return None
    try:
        text = block.decode()
    except UnicodeDecodeError:
        return None
    lines = text.split("\n")
    lines.pop()
    if "\r" in text:
        lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    command = lines[0]
    if ":" in command:
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        key, sep, value = line.partition(":")
        if not sep or ":" in value:
            return None
        if key not in headers:
            headers[key] = value
    return Frame(command, headers)


class FrameParser:
    """Incremental parser: feed it whatever the socket gave, get back every complete frame.

    ``heartbeats`` counts the bare end-of-line bytes seen between frames so a client can tell a
    live but idle peer from a dead one; VDSM itself treats any received byte as a sign of life.
    After a `StompError` the parser's state is undefined; drop the connection.
    """

    __slots__ = ("_body_scan", "_buf", "_pending", "heartbeats", "max_frame_size")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.max_frame_size = max_frame_size
        self.heartbeats = 0
        self._buf = bytearray()
        # A frame whose command and headers are parsed, waiting for its body:
        # (frame, content length or -1 for "up to NUL").
        self._pending: tuple[Frame, int] | None = None
        self._body_scan = 0  # where the search for NUL resumes (no content-length)

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        buf = self._buf
        buf += data
        frames: list[Frame] = []
        while True:
            if self._pending is None:
                if not self._parse_head():
                    break
            frame = self._parse_body()
            if frame is None:
                break
            frames.append(frame)
        return frames

    def _parse_head(self) -> bool:
        buf = self._buf
        # Skip heart-beats: EOLs before a command.
        skip = 0
        size = len(buf)
        while skip < size:
            byte = buf[skip]
            if byte == 10:
                self.heartbeats += 1
                skip += 1
            elif byte == 13 and skip + 1 < size and buf[skip + 1] == 10:
                self.heartbeats += 1
                skip += 2
            else:
                break
        if skip:
            del buf[:skip]
        if not buf:
            return False
        # Find the blank line that ends the headers without copying anything yet.
        pos = 0
        while True:
            end = buf.find(b"\n", pos)
            if end < 0:
                self._check_size(len(buf))
                return False
            if pos and (end == pos or (end == pos + 1 and buf[pos] == 13)):
                break
            pos = end + 1
        head_end, pos = pos, end + 1
        self._check_size(pos)
        block = bytes(buf[:head_end])
        frame = _fast_head(block) or _slow_head(block)
        headers = frame.headers
        length = -1
        if "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                raise StompError(f"bad content-length {headers['content-length']!r}") from None
            if length > self.max_frame_size:
                raise StompError(f"frame of {length} bytes exceeds {self.max_frame_size}")
        del buf[:pos]
        self._pending = (frame, length)
        self._body_scan = 0
        return True

    def _parse_body(self) -> Frame | None:
        assert self._pending is not None
        frame, length = self._pending
        buf = self._buf
        if length >= 0:
            if len(buf) < length + 1:
                return None
            if buf[length] != 0:
                raise StompError("Frame doesn't end with NULL byte")
            end = length
        else:
            end = buf.find(b"\0", self._body_scan)
            if end < 0:
                self._body_scan = len(buf)
                self._check_size(len(buf))
                return None
        frame.body = bytes(buf[:end])
        del buf[: end + 1]
        self._pending = None
        return frame

    def _check_size(self, size: int) -> None:
        if size > self.max_frame_size:
            raise StompError(f"frame exceeds {self.max_frame_size} bytes")
