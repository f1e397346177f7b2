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

import struct

from .errors import FrameTooLarge, ProtocolError

DEFAULT_MAX_FRAME = 64 * 1024
_HEADER = 4
_unpack_header = struct.Struct(">I").unpack_from


class _Framer:
    """What both framings share: the limit, the buffer of an incomplete
    frame, and ``feed`` = ``split(take(data))``."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if not 0 <= max_frame < 1 << 32:
            raise ValueError(f"max_frame must be 0..2**32-1, got {max_frame!r}")
        self.max_frame = max_frame
        self._buf = bytearray()

    def take(self, data: bytes) -> bytes:
        raise NotImplementedError

    @staticmethod
    def split(wire: bytes) -> list[bytes]:
        raise NotImplementedError

    @staticmethod
    def frame_end(wire: bytes, i: int) -> int:
        """Where the frame starting at ``i`` of ``take``'s output ends."""
        raise NotImplementedError

    @classmethod
    def cut(cls, wire: bytes, limit: int) -> list[bytes]:
        """``take``'s output in pieces of at most ``limit`` bytes, cut between
        frames (a single larger frame stays whole).  Only for a read larger
        than ``limit``, so a call per frame is fine here."""
        pieces: list[bytes] = []
        start = i = 0
        while i < len(wire):
            j = cls.frame_end(wire, i)
            if j - start > limit and i > start:
                pieces.append(wire[start:i])
                start = i
            i = j
        pieces.append(wire[start:])
        return pieces

    def feed(self, data: bytes) -> list[bytes]:
        """Frames completed by ``data``.  Raises ``FrameTooLarge``."""
        return self.split(self.take(data))

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame waiting for more input."""
        return len(self._buf)


class LengthFraming(_Framer):
    name = "length"

    def take(self, data: bytes) -> bytes:
        """Like ``feed``, but returns the complete frames still in wire form,
        in one piece (the connect process forwards them without splitting)."""
        buf = bytes(self._buf) + data if self._buf else bytes(data)
        unpack = _unpack_header
        limit = self.max_frame
        i = 0
        end = len(buf)
        while end - i >= _HEADER:
            n = unpack(buf, i)[0]
            if n > limit:
                raise FrameTooLarge(
                    f"frame of {n} bytes announced, the limit is {limit}", size=n, limit=limit
                )
            if i + _HEADER + n > end:
                break
            i += _HEADER + n
        if i == end:
            self._buf = bytearray()
            return buf
        self._buf = bytearray(buf[i:])
        return buf[:i]

    @staticmethod
    def frame_end(wire: bytes, i: int) -> int:
        return i + _HEADER + _unpack_header(wire, i)[0]

    @staticmethod
    def split(wire: bytes) -> list[bytes]:
        """The payloads of complete frames in wire form (from ``take``).
        Raises ``ProtocolError`` unless the lengths chain exactly to the end."""
        frames: list[bytes] = []
        append = frames.append
        unpack = _unpack_header
        i = 0
        end = len(wire)
        while i < end:
            if end - i < _HEADER:
                raise ProtocolError(f"{end - i} stray bytes after the last frame", at=i)
            j = i + _HEADER + unpack(wire, i)[0]
            if j > end:
                raise ProtocolError(f"a frame at {i} runs {j - end} bytes past the end", at=i)
            append(wire[i + _HEADER : j])
            i = j
        return frames

    def encode(self, payload: bytes) -> bytes:
        return len(payload).to_bytes(_HEADER, "big") + payload


class LineFraming(_Framer):
    name = "line"

    def take(self, data: bytes) -> bytes:
        """Complete lines in wire form (see ``LengthFraming.take``)."""
        buf = bytes(self._buf) + data if self._buf else bytes(data)
        last = buf.rfind(b"\n")
        whole = buf[: last + 1]
        rest = buf[last + 1 :]
        limit = self.max_frame
        if len(whole) > limit + 1:  # some line may be too long: look at each
            start = 0
            while start < len(whole):
                nl = whole.index(b"\n", start)
                size = nl - start - (1 if nl > start and whole[nl - 1] == 13 else 0)
                if size > limit:
                    raise FrameTooLarge(
                        f"line of {size} bytes, the limit is {limit}", size=size, limit=limit
                    )
                start = nl + 1
        if len(rest) > limit + 1:
            raise FrameTooLarge(
                f"line longer than {limit} bytes without a newline", size=len(rest), limit=limit
            )
        self._buf = bytearray(rest)
        return whole

    @staticmethod
    def frame_end(wire: bytes, i: int) -> int:
        return wire.index(b"\n", i) + 1

    @staticmethod
    def split(wire: bytes) -> list[bytes]:
        """The lines of ``take``'s output, without their ``\r\n`` or ``\n``."""
        lines = wire.split(b"\n")
        if lines[-1]:
            raise ProtocolError("the last line has no newline", size=len(lines[-1]))
        del lines[-1]
        return [line[:-1] if line.endswith(b"\r") else line for line in lines]

    def encode(self, payload: bytes) -> bytes:
        return payload if payload.endswith(b"\n") else payload + b"\n"


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
