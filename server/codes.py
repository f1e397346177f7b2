"""The codes exchanged by the connect and logic processes (pure).

Every code is ``kind (u8) | conn (u64 little-endian) | body``::

    inbound  (connect -> logic)      outbound (logic -> connect)
    ---------------------------      ---------------------------------------
    OPENED   conn, body = peer       SEND       conn, body = frames
    MESSAGE  conn, body = frames     BROADCAST  conn = excluded (0: none),
    CLOSED   conn, body = reason                body = frame
                                     CLOSE      conn, body = reason

``frames`` are one or more complete frames in wire form: a MESSAGE carries
what one ``recv`` completed (the connect process checks the frame limit but
does not split), a SEND every reply of one step to one connection (the
logic process frames them).  So the per-request work happens in the logic
process, and the connect process moves bytes in bulk.

A connection id is ``generation << 32 | slot``.  Slots are reused; the
generation grows with every reuse, so a reply to a connection that is gone
can never reach the newer connection in its slot.  Generation 0 is never
handed out, so id 0 means "no connection".

Codes come out of shared memory: ``decode`` checks the kind and the length
and raises ``BadCode`` rather than guessing.
"""

from __future__ import annotations

import enum
import struct
from typing import NamedTuple

from .errors import CorruptSegment

_HEAD = struct.Struct("<BQ")
HEADER_SIZE = _HEAD.size
NO_CONN = 0


class Kind(enum.IntEnum):
    OPENED = 1
    MESSAGE = 2
    CLOSED = 3
    SEND = 11
    BROADCAST = 12
    CLOSE = 13


class BadCode(CorruptSegment):
    """A code read from a queue has an unknown kind or is too short."""


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
