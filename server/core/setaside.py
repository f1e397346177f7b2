"""The requests set aside as poison, kept for a person to look at (pure).

When the logic process sets a request aside (it killed the process
``MAX_ATTEMPTS`` times, see ``server.core.journal``), the request is written
here as well as to the log, so ``python -m server inspect --set-aside``
can show and dump it later.  It is a ring of records (``server.core.ring``
layout) that only the logic process writes; when a new record does not fit,
the oldest ones are dropped first, so it always holds the latest.

Record (little-endian)::

    offset  size  field
    ------  ----  --------------------------------------------------
         0     8  conn       the connection the request came from
         8     8  at_ms      when it was set aside (unix time, ms)
        16     4  size       the request's full size in bytes
        20     4  attempts   how many times it was attempted
        24     …  payload    its first ``KEEP`` bytes

A reader (the inspector) only peeks, while the logic process may be
writing: a record it cannot parse is reported as such, never trusted.
"""

from __future__ import annotations

import struct
from typing import Any

from ..errors import CorruptSegment
from .codering import CodeRing
from .placed import InSegment
from .ring import region_size

CAPACITY = 64 * 1024
KEEP = 4096
_RECORD = struct.Struct("<QQII")


class SetAsideLog(InSegment):
    KIND = "SetAsideLog"

    def __init__(self, region: memoryview, capacity: int, *, init: bool, observer: bool = False):
        self.ring = CodeRing(region, capacity, init=init, check_records=not observer)

    @classmethod
    def region_size(cls, param: int = 0) -> int:
        return region_size(param or CAPACITY)

    @classmethod
    def param_of(cls, size: int) -> int:
        return size - region_size(0)

    @classmethod
    def on_region(
        cls, region: memoryview, param: int, *, init: bool, observer: bool
    ) -> SetAsideLog:
        return cls(region, param or CAPACITY, init=init, observer=observer)

    def release(self) -> None:
        self.ring.release()

    def add(self, conn: int, payload: bytes, at_ms: int, attempts: int) -> None:
        record = _RECORD.pack(conn, at_ms, len(payload), attempts) + payload[:KEEP]
        ring = self.ring
        ring.recover_producer()  # this process is both ends: repair both
        ring.recover_consumer()
        while not ring.push(record):
            if ring.pop() is None:  # empty, and still no room: cannot happen with KEEP
                return

    def entries(self) -> list[dict[str, Any]]:
        """Every record still kept, oldest first (read without consuming)."""
        try:
            raw, _ = self.ring.peek_many(max_bytes=self.ring.capacity)
        except CorruptSegment as err:
            return [{"unreadable": str(err)}]
        out: list[dict[str, Any]] = []
        for record in raw:
            if len(record) < _RECORD.size:
                out.append({"unreadable": f"a record of {len(record)} bytes"})
                continue
            conn, at_ms, size, attempts = _RECORD.unpack_from(record)
            out.append(
                {
                    "conn": conn,
                    "at_ms": at_ms,
                    "size": size,
                    "attempts": attempts,
                    "payload": record[_RECORD.size :],
                }
            )
        return out

    def report(self, name: str) -> dict[str, Any]:
        return {"set_aside_kept": len(self.ring)}
