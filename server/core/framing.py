"""Wire framing: turning a TCP byte stream into frames and back (sans I/O).

Two framings, both with a maximum frame size that protects the server:

* ``length``: a 4-byte big-endian length, then that many payload bytes.  A
  header announcing more than ``max_frame`` is refused at once, before the
  payload arrives (nobody gets to make us buffer it).
* ``line``: payload bytes up to ``\\n``; one ``\\r`` before it is dropped, so
  ``nc`` and ``telnet`` work.  A line that grows past ``max_frame`` without
  a newline is refused.

A framer is fed whatever ``recv`` returned, in pieces of any size; the rest
of an incomplete frame waits in its buffer.  It never touches a socket.

The stream is parsed here once.  ``take`` returns the complete frames as
MESSAGE bodies (frame records, see ``server.core.codes``), cut between
frames so that no body is longer than ``limit`` unless one frame alone is;
for the length framing the records are the wire bytes themselves, so a read
of whole frames passes through without a copy.  An incomplete frame grows by
appending: it is copied once, when it completes, not again on every read
(a slow client sending a large frame in small pieces costs linear time).  ``feed`` returns the
payloads, for code that wants frames one by one (the tutorial, the tests).
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import ConfigError, FrameTooLarge
from .codes import FRAME_HEADER, pack_frame_header, payloads, unpack_frame_header

DEFAULT_MAX_FRAME = 64 * 1024
NO_LIMIT = 1 << 62
Chunk = bytes | memoryview  # bytes, or a view of a buffer that its owner reuses
_unpack_length = unpack_frame_header  # the length framing's header is a frame record's


class _Framer:
    """What both framings share: the limit, the buffer of an incomplete
    frame, and ``feed``."""

    name = ""
    # When a frame is a header then the payload as it is: the header of a
    # payload of n bytes (``server.core.app.Conn.send`` then skips the copy).
    header_of: Callable[[int], bytes] | None = None

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if not 0 <= max_frame < 1 << 32:
            raise ValueError(f"max_frame must be 0..2**32-1, got {max_frame!r}")
        self.max_frame = max_frame
        self._buf = bytearray()  # an incomplete frame; grows by appending (no re-copy)
        self._need = 0  # bytes the incomplete frame needs in all, when known

    def take(self, data: Chunk, limit: int = NO_LIMIT) -> list[Chunk]:
        """The frames ``data`` completes, as MESSAGE bodies of at most
        ``limit`` bytes each (a single larger frame stays whole).  Raises
        ``FrameTooLarge``.  ``data`` may be a view of a buffer the caller
        reuses: a body may then be a view of it too, to be copied (into
        its code) before the buffer is read into again."""
        raise NotImplementedError

    def encode(self, payload: bytes) -> bytes:
        raise NotImplementedError

    def feed(self, data: bytes) -> list[bytes]:
        """The payloads of the frames ``data`` completes.  Raises ``FrameTooLarge``."""
        return [p for body in self.take(data) for p in payloads(bytes(body))]  # bytes in: no copy

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame waiting for more input."""
        return len(self._buf)

    def missing(self) -> int:
        """Bytes the incomplete frame still needs, when known (else 1: at
        least one more)."""
        return 1

    def pending(self) -> bytes:
        """The incomplete frame's bytes: ``take`` them in a new framer of the
        same kind and it is in this one's state (a connect handover)."""
        return bytes(self._buf)


class LengthFraming(_Framer):
    name = "length"
    header_of = staticmethod(pack_frame_header)  # a frame is this, then the payload

    def take(self, data: Chunk, limit: int = NO_LIMIT) -> list[Chunk]:
        buf: Chunk
        if self._buf:
            if len(self._buf) + len(data) < self._need:  # still incomplete: append only
                self._buf += data
                return []
            buf = bytes(self._buf) + data
        else:
            buf = data  # bytes or the caller's view: bodies are slices of it, not copies
        unpack = _unpack_length
        most = self.max_frame
        bodies: list[Chunk] = []
        start = i = 0
        end = len(buf)
        if end <= limit:  # one body holds it all: only the headers to walk (once per frame)
            last = end - FRAME_HEADER
            while i <= last:
                n = unpack(buf, i)[0]
                if n > most:
                    raise FrameTooLarge(
                        f"frame of {n} bytes announced, the limit is {most}", size=n, limit=most
                    )
                i += FRAME_HEADER + n
            if i > end:
                i -= FRAME_HEADER + n  # the last frame is incomplete: it begins there
        while end - i >= FRAME_HEADER:
            n = unpack(buf, i)[0]
            if n > most:
                raise FrameTooLarge(
                    f"frame of {n} bytes announced, the limit is {most}", size=n, limit=most
                )
            j = i + FRAME_HEADER + n
            if j > end:
                break
            if j - start > limit and i > start:  # the body is full: cut before this frame
                bodies.append(buf[start:i])
                start = i
            i = j
        if i == end:
            self._buf = bytearray()
            self._need = 0
            if start == 0 and end:
                return [buf]  # the usual case: whole frames, no copy
        else:
            self._buf = bytearray(buf[i:])
            left = end - i
            self._need = FRAME_HEADER + unpack(buf, i)[0] if left >= FRAME_HEADER else 0
        if i > start:
            bodies.append(buf[start:i])
        return bodies

    def missing(self) -> int:
        if self._need:
            return self._need - len(self._buf)
        if self._buf:
            return FRAME_HEADER - len(self._buf)  # the rest of the header at least
        return 1  # any byte begins a frame (and starts its --frame-timeout)

    def encode(self, payload: bytes) -> bytes:
        return pack_frame_header(len(payload)) + payload


class LineFraming(_Framer):
    name = "line"

    def take(self, data: Chunk, limit: int = NO_LIMIT) -> list[Chunk]:
        data = bytes(data)  # searched for newlines and split: bytes (a no-op for bytes)
        most = self.max_frame
        if self._buf and b"\n" not in data:  # still no end of line: append only
            self._buf += data
            if len(self._buf) > most + 1:
                raise FrameTooLarge(
                    f"line longer than {most} bytes without a newline",
                    size=len(self._buf),
                    limit=most,
                )
            return []
        buf = bytes(self._buf) + data if self._buf else bytes(data)
        last = buf.rfind(b"\n")
        rest = buf[last + 1 :]
        if len(rest) > most + 1:  # one more byte may be the \r of a line at the limit
            raise FrameTooLarge(
                f"line longer than {most} bytes without a newline", size=len(rest), limit=most
            )
        self._buf = bytearray(rest)
        if last < 0:
            return []
        bodies: list[Chunk] = []
        parts: list[bytes] = []
        size = 0
        for line in buf[:last].split(b"\n"):
            if line.endswith(b"\r"):
                line = line[:-1]
            n = len(line)
            if n > most:
                raise FrameTooLarge(f"line of {n} bytes, the limit is {most}", size=n, limit=most)
            if size + FRAME_HEADER + n > limit and parts:
                bodies.append(b"".join(parts))
                parts = []
                size = 0
            parts.append(pack_frame_header(n))
            parts.append(line)
            size += FRAME_HEADER + n
        bodies.append(b"".join(parts))
        return bodies

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
        raise ConfigError(
            f"--framing {name!r}: unknown framing; choose one of {', '.join(FRAMINGS)}",
            option="--framing",
            value=name,
        ) from None
    return cls(max_frame)
