"""Wire framing: turning a TCP byte stream into frames and back (sans I/O).

Two framings, both with a maximum frame size that protects the server:

* ``length``: a 4-byte big-endian length, then that many payload bytes.  A
  header announcing more than ``max_frame`` is refused at once, before the
  payload arrives (nobody gets to make us buffer it).
* ``line``: payload bytes up to ``\\n``; one ``\\r`` before it is dropped, so
  ``nc`` and ``telnet`` work.  A line that grows past ``max_frame`` without
  a newline is refused.

A framer is fed whatever ``recv`` returned, in pieces of any size, and returns
the complete frames; the rest waits in its buffer.  It never touches a socket.
"""

from __future__ import annotations

from .errors import FrameTooLarge, ProtocolError

DEFAULT_MAX_FRAME = 64 * 1024
_HEADER = 4


class LengthFraming:
    name = "length"

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if not 0 <= max_frame < 1 << 32:
            raise ValueError(f"max_frame must be 0..2**32-1, got {max_frame!r}")
        self.max_frame = max_frame
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Frames completed by ``data``.  Raises ``FrameTooLarge``."""
        buf = self._buf
        buf += data
        frames: list[bytes] = []
        i = 0
        end = len(buf)
        while end - i >= _HEADER:
            n = int.from_bytes(buf[i : i + _HEADER], "big")
            if n > self.max_frame:
                raise FrameTooLarge(
                    f"frame of {n} bytes announced, the limit is {self.max_frame}",
                    size=n,
                    limit=self.max_frame,
                )
            if end - i - _HEADER < n:
                break
            frames.append(bytes(buf[i + _HEADER : i + _HEADER + n]))
            i += _HEADER + n
        if i:
            del buf[:i]
        return frames

    def encode(self, payload: bytes) -> bytes:
        return len(payload).to_bytes(_HEADER, "big") + payload

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame waiting for more input."""
        return len(self._buf)


class LineFraming:
    name = "line"

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if max_frame < 0:
            raise ValueError(f"max_frame must be >= 0, got {max_frame!r}")
        self.max_frame = max_frame
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        searched = len(buf)  # the old part holds no newline
        buf += data
        frames: list[bytes] = []
        start = 0
        while (nl := buf.find(b"\n", searched)) >= 0:
            line = buf[start:nl]
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > self.max_frame:
                raise FrameTooLarge(
                    f"line of {len(line)} bytes, the limit is {self.max_frame}",
                    size=len(line),
                    limit=self.max_frame,
                )
            frames.append(bytes(line))
            start = searched = nl + 1
        if start:
            del buf[:start]
        if len(buf) > self.max_frame + 1:  # +1: a '\r' may still precede the '\n'
            raise FrameTooLarge(
                f"line longer than {self.max_frame} bytes without a newline",
                size=len(buf),
                limit=self.max_frame,
            )
        return frames

    def encode(self, payload: bytes) -> bytes:
        return payload if payload.endswith(b"\n") else payload + b"\n"

    @property
    def buffered(self) -> int:
        return len(self._buf)


Framing = LengthFraming | LineFraming
FRAMINGS: dict[str, type[LengthFraming] | type[LineFraming]] = {
    "length": LengthFraming,
    "line": LineFraming,
}


def make_framing(name: str, max_frame: int = DEFAULT_MAX_FRAME) -> Framing:
    try:
        cls = FRAMINGS[name]
    except KeyError:
        raise ProtocolError(
            f"unknown framing {name!r}; choose one of {', '.join(FRAMINGS)}", framing=name
        ) from None
    return cls(max_frame)
