"""The connection table: one word per slot, in shared memory (pure core).

The connect process hands out connection ids ``generation << 32 | slot``
(see ``server.core.codes``).  The generation of every slot lives here, in the
segment, so it keeps growing across restarts of the connect process: a reply
still queued for a connection of a dead connect process can never reach the
new connection that took its slot.

Layout: ``max_conns`` u64 words; word ``s`` is ``generation << 1 | open``.
Only the connect process writes; each change is one aligned store.
Generations run 1 .. 2**31-1 and then wrap to 1 (ids stay below 2**63).

Untrusted on recovery: a word whose generation is out of range makes the
table refuse to load (``CorruptSegment``) rather than hand out odd ids.
"""

from __future__ import annotations

from typing import Any

from ..errors import CorruptSegment
from .codes import conn_id, generation_of, slot_of
from .placed import InSegment, slot_words

KIND = "ConnTable"
MAX_GENERATION = (1 << 31) - 1


def region_size(max_conns: int) -> int:
    return 8 * max_conns


class ConnTable(InSegment):
    KIND = KIND

    @classmethod
    def region_size(cls, param: int = 0) -> int:
        return region_size(param)

    @classmethod
    def param_of(cls, size: int) -> int:
        return size // 8

    @classmethod
    def on_region(cls, region: memoryview, param: int, *, init: bool, observer: bool) -> ConnTable:
        return cls(region, param, init=init)

    def report(self, name: str) -> dict[str, Any]:
        return {"connections": self.count_open(), "open_conns": self.open_ids()}

    def __init__(self, region: memoryview, max_conns: int, *, init: bool) -> None:
        self.max_conns = max_conns
        self._w = slot_words(region, max_conns, 1, "a connection table", init=init)
        if init:
            return
        for slot in range(max_conns):
            if self._w[slot] >> 1 > MAX_GENERATION:
                raise CorruptSegment(
                    f"connection slot {slot} holds generation {self._w[slot] >> 1}, above "
                    f"{MAX_GENERATION}: the segment is corrupt; remove it "
                    f"(python -m server clean) to start afresh",
                    field=f"conns[{slot}]",
                    found=self._w[slot],
                    expected=f"<= {MAX_GENERATION << 1 | 1}",
                )

    def release(self) -> None:
        self._w.release()

    def open(self, slot: int) -> int:
        """Mark ``slot`` open under a new generation; returns the connection id."""
        generation = (self._w[slot] >> 1) + 1
        if generation > MAX_GENERATION:
            generation = 1
        self._w[slot] = generation << 1 | 1
        return conn_id(slot, generation)

    def close(self, conn: int) -> None:
        slot = slot_of(conn)
        self._w[slot] = self._w[slot] & ~1

    def is_open(self, conn: int) -> bool:
        """Is ``conn`` the connection that currently holds its slot?"""
        slot = slot_of(conn)
        return slot < self.max_conns and self._w[slot] == (generation_of(conn) << 1 | 1)

    def open_ids(self) -> list[int]:
        """Ids of the slots marked open (after a crash: the lost connections)."""
        w = self._w
        return [conn_id(s, w[s] >> 1) for s in range(self.max_conns) if w[s] & 1]

    def count_open(self) -> int:
        w = self._w
        return sum(w[s] & 1 for s in range(self.max_conns))
