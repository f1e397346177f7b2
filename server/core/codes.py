"""The codes exchanged by the connect and logic processes (pure).

Every code is ``kind (u8) | conn (u64 little-endian) | body``::

    inbound  (connect -> logic)      outbound (logic -> connect)
    ---------------------------      ---------------------------------------
    OPENED   conn, body = peer       SEND       conn, body = wire bytes
    MESSAGE  conn, body = records    BROADCAST  conn = excluded (0: none),
    CLOSED   conn, body = reason                body = wire bytes
                                     CLOSE      conn, body = reason

A MESSAGE body is one or more *frame records*, ``u32 big-endian length |
payload`` each: what one ``recv`` completed.  The connect process parses
the client's stream once (``server.core.framing``) and writes the frames in
this form; for the length framing the records *are* the wire bytes, so they
pass through untouched.  The logic process reads the records back with
``payloads`` and never looks at the client's framing again.  Outbound
bodies are already in the client's wire form: the logic process framed
every reply, and the replies of one step to one connection share one SEND
code, so the connect process only appends bytes.

A connection id is ``generation << 32 | slot``.  Slots are reused; the
generation grows with every reuse, so a reply to a connection that is gone
can never reach the newer connection in its slot.  Generation 0 is never
handed out, so id 0 means "no connection".

Codes come out of shared memory: ``decode`` and ``payloads`` check kinds
and lengths and raise ``BadCode`` rather than guessing.  This module is the
only place that knows the byte layout of a code; the hot loops use
``head_of`` (one C call, no checks) and compare the kind with ``Kind``
values themselves.
"""

from __future__ import annotations

import enum
import struct
from typing import NamedTuple

from ..errors import BadCode

_HEAD = struct.Struct("<BQ")
HEADER_SIZE = _HEAD.size
NO_CONN = 0
_FRAME = struct.Struct(">I")
FRAME_HEADER = _FRAME.size
pack_frame_header = _FRAME.pack
unpack_frame_header = _FRAME.unpack_from

# (kind, conn) of a code, without any check: for the hot loops, which then
# compare the kind with Kind values (an unknown kind is theirs to report).
head_of = _HEAD.unpack_from


class Kind(enum.IntEnum):
    OPENED = 1
    MESSAGE = 2
    CLOSED = 3
    SEND = 11
    BROADCAST = 12
    CLOSE = 13


class Code(NamedTuple):
    kind: Kind
    conn: int
    body: bytes


def conn_id(slot: int, generation: int) -> int:
    return (generation << 32) | slot


def slot_of(conn: int) -> int:
    return conn & 0xFFFF_FFFF


def generation_of(conn: int) -> int:
    return conn >> 32


def encode(kind: Kind, conn: int, body: bytes = b"") -> bytes:
    return _HEAD.pack(kind, conn) + body


def decode(code: bytes) -> Code:
    if len(code) < HEADER_SIZE:
        raise BadCode(
            f"a code of {len(code)} bytes is shorter than its {HEADER_SIZE}-byte header",
            field="code",
            found=len(code),
            expected=f">= {HEADER_SIZE}",
        )
    kind, conn = _HEAD.unpack_from(code)
    try:
        k = Kind(kind)
    except ValueError:
        raise BadCode(
            f"unknown code kind {kind}", field="kind", found=kind, expected=[k.value for k in Kind]
        ) from None
    return Code(k, conn, code[HEADER_SIZE:])


def payloads(body: bytes, start: int = 0) -> list[bytes]:
    """The payloads of a MESSAGE body (the bytes of ``body`` from ``start``:
    a whole code and ``HEADER_SIZE`` read them without copying the body
    first).  Raises ``BadCode`` unless the frame records chain exactly to
    the end."""
    out: list[bytes] = []
    append = out.append
    unpack = unpack_frame_header
    i = start
    end = len(body)
    while i < end:
        if end - i < FRAME_HEADER:
            raise BadCode(
                f"{end - i} stray bytes after the last frame of a MESSAGE code",
                field="message body",
                found=end - i,
                expected=f">= {FRAME_HEADER}",
            )
        j = i + FRAME_HEADER + unpack(body, i)[0]
        if j > end:
            raise BadCode(
                f"a frame at {i - start} of a MESSAGE code runs {j - end} bytes past its end",
                field="message body",
                found=j - start,
                expected=f"<= {end - start}",
            )
        append(body[i + FRAME_HEADER : j])
        i = j
    return out


def frame_records(frames: list[bytes]) -> bytes:
    """A MESSAGE body holding ``frames`` (the inverse of ``payloads``)."""
    return b"".join(pack_frame_header(len(f)) + f for f in frames)
