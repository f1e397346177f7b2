"""A bus relay's links, as ``inspect`` shows them (pure core).

A region of the relay's own small segment (``server.proc.relaysup``), next
to its status board.  One slot per other host, in the order the relay
numbers them (its mark slots: the sorted host names); only the relay
process writes, the inspector reads.  Every number is one aligned u64
store, so a reader never sees a torn value; the host's name is written
once, when the relay starts, before anything else of its slot.

Layout: word 0 is the magic ``b"LINKS\\x00\\x00\\x01"``, word 1 the number of
slots in use; slot ``i`` starts at byte ``64 + 160 * i`` (``SLOTS`` = 32)::

    bytes  field          meaning
    -----  -------------  -----------------------------------------------------
     0-63  name           the other host, UTF-8, NUL-padded
    64     out_state      LinkState of our link to it (we connect)
    72     out_since      wall-clock ms of its last change of state
    80     out_sent       the last sequence number sent on it
    88     out_acked      the last one it acknowledged (freed from the outbox)
    96     out_bytes      bytes sent to it, every connection
    104    out_ups        how often it came up (reconnects: ups - 1)
    112    in_state       LinkState of its link to us (it connects)
    120    in_since       wall-clock ms of its last change of state
    128    in_applied     the last sequence number from it applied here
    136    in_bytes       bytes received from it
    144    in_ups         how often its link came up
    152    (reserved)

The inspector checks the magic, the slot count (at most ``SLOTS``) and
each state against ``LinkState``; a name that is not UTF-8 is shown
escaped.  Anything else is a number it only displays.
"""

from __future__ import annotations

import enum
from typing import Any

from ..errors import CorruptSegment
from .placed import InSegment, magic_words

MAGIC = int.from_bytes(b"LINKS\x00\x00\x01", "little")
SLOTS = 32
SLOT_BYTES = 160
NAME_BYTES = 64
HEADER = 64
REGION_SIZE = HEADER + SLOTS * SLOT_BYTES
_FIELDS = (
    "out_state",
    "out_since",
    "out_sent",
    "out_acked",
    "out_bytes",
    "out_ups",
    "in_state",
    "in_since",
    "in_applied",
    "in_bytes",
    "in_ups",
)
_WORD = {name: i for i, name in enumerate(_FIELDS)}


class LinkState(enum.IntEnum):
    NONE = 0  # not yet tried (outgoing) / never connected (incoming)
    CONNECTING = 1
    UP = 2
    DOWN = 3  # outgoing: retrying with back-off; incoming: closed


class LinkSlot:
    """The words of one other host, as one-word views: ``slot.out_sent[0] = 7``."""

    def __init__(self, words: memoryview, first: int) -> None:
        for name, i in _WORD.items():
            setattr(self, name, words[first + i : first + i + 1])

    out_state: memoryview
    out_since: memoryview
    out_sent: memoryview
    out_acked: memoryview
    out_bytes: memoryview
    out_ups: memoryview
    in_state: memoryview
    in_since: memoryview
    in_applied: memoryview
    in_bytes: memoryview
    in_ups: memoryview

    def release(self) -> None:
        for name in _FIELDS:
            getattr(self, name).release()


class LinkBoard(InSegment):
    KIND = "LinkBoard"
    SIZE = REGION_SIZE

    def __init__(self, region: memoryview, *, init: bool) -> None:
        self._region = region
        self._w = magic_words(
            region,
            REGION_SIZE,
            MAGIC,
            "link board",
            "links.magic",
            init=init,
            where="the relay's segment",
            remedy="stop the relay and remove it (python -m server clean --key ...)",
        )
        self._slots: list[LinkSlot] = []

    @classmethod
    def on_region(cls, region: memoryview, param: int, *, init: bool, observer: bool) -> LinkBoard:
        return cls(region, init=init)

    def release(self) -> None:
        for slot in self._slots:
            slot.release()
        self._w.release()

    # -- the relay ------------------------------------------------------------------
    def open(self, names: list[str]) -> list[LinkSlot]:
        """The relay starts: one slot per name, in this order (its numbers
        stay, so a restarted relay goes on counting where the last one was,
        unless the hosts changed: then every slot starts from zero)."""
        if len(names) > SLOTS:
            raise ValueError(f"a link board has {SLOTS} slots, not {len(names)}")
        if [self.name(i) for i in range(len(names))] != names or self._w[1] != len(names):
            self._region[HEADER:] = bytes(REGION_SIZE - HEADER)
            for i, name in enumerate(names):
                raw = name.encode()[:NAME_BYTES]
                at = HEADER + SLOT_BYTES * i
                self._region[at : at + len(raw)] = raw
            self._w[1] = len(names)
        slots = [LinkSlot(self._w, self._first(i)) for i in range(len(names))]
        self._slots += slots
        return slots

    @staticmethod
    def _first(i: int) -> int:
        return (HEADER + SLOT_BYTES * i + NAME_BYTES) // 8

    def name(self, i: int) -> str:
        at = HEADER + SLOT_BYTES * i
        raw = bytes(self._region[at : at + NAME_BYTES]).rstrip(b"\0")
        return raw.decode(errors="backslashreplace")

    # -- the inspector ----------------------------------------------------------------
    def report(self, name: str) -> dict[str, Any]:
        used = self._w[1]
        if used > SLOTS:
            raise CorruptSegment(
                f"link board says {used} links, at most {SLOTS}: the relay's segment is corrupt",
                field="links.count",
                found=used,
                expected=SLOTS,
            )
        links = {}
        for i in range(used):
            first = self._first(i)
            values: dict[str, Any] = {f: self._w[first + j] for j, f in enumerate(_FIELDS)}
            for side in ("out", "in"):
                raw = values[f"{side}_state"]
                try:
                    values[f"{side}_state"] = LinkState(raw).name.lower()
                except ValueError:
                    values[f"{side}_state"] = f"unknown state {raw} (corrupt?)"
            values["out_reconnects"] = max(0, values["out_ups"] - 1)
            links[self.name(i)] = values
        return {"links": links}
