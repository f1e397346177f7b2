"""The segment header and its placement directory (pure: works on any buffer).

A segment starts with a fixed 4096-byte header; objects are placed after it,
one after another, each on a 64-byte boundary (so every 8-byte counter inside
an object is aligned and the hot counters of two objects never share a cache
line).  Every placement is recorded in the directory, so a process that
attaches later can check that it places the same objects in the same way.

Header (all integers little-endian u64, each written with one aligned store)::

    offset  size  field          written by
    ------  ----  -------------  ------------------------------------------
         0     8  magic          INIT  (b"STCPSHM\\0")
         8     8  version        INIT  (LAYOUT_VERSION)
        16     8  size           INIT  (segment size in bytes)
        24     8  generation     every owner start (INIT sets 1, RECOVER +1)
        32     8  ready          INIT, *last* of the header: READY once the fields
                                 above are written (the directory may be empty)
        40     8  entries        the owner, after writing each directory entry
        48     8  last_mode      every owner start (1 = INIT, 2 = RECOVER)
        56     8  (reserved)
        64  64*N  directory      one entry per placement

Directory entry (64 bytes)::

         0    24  name    UTF-8, NUL padded
        24     8  state   0 while the object is being initialised; DONE,
                          written *last* by the object's INIT
        32    16  kind    UTF-8, NUL padded (the class placed there)
        48     8  offset  from the start of the segment
        56     8  size    bytes

Invariants: ``ready`` is either 0 or READY, and set only after every other
header field, so a crash while the header is written leaves it 0 and the
next start formats the segment again.  Each entry is written whole before
``entries`` counts it; its ``state`` is DONE only once the object placed
there finished its own initialisation, so a crash between two placements (or
in the middle of one) leaves exactly the unfinished objects not DONE, and
only they are initialised again.  Nobody has to say "I am done placing".
Entries are contiguous and ordered: entry i ends at or before entry i+1
begins, and the last one ends within ``size``.  Everything read back is
checked against these rules before it is trusted.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..errors import CorruptSegment, LayoutMismatch, SegmentFull

MAGIC = int.from_bytes(b"STCPSHM\0", "little")
LAYOUT_VERSION = 3  # 3: 128-byte stream ledger entries; 2: per-object DONE state in the directory
READY = int.from_bytes(b"READY\0\0\0", "little")
DONE = int.from_bytes(b"INITDONE", "little")
HEADER_SIZE = 4096
ALIGN = 64
ENTRY_SIZE = 64
DIRECTORY_OFFSET = 64
MAX_ENTRIES = (HEADER_SIZE - DIRECTORY_OFFSET) // ENTRY_SIZE
NAME_BYTES = 24
STATE_OFFSET = 24
KIND_OFFSET = 32
KIND_BYTES = 16

# Word indexes into the header viewed as u64.
_MAGIC, _VERSION, _SIZE, _GENERATION, _READY, _ENTRIES, _LAST_MODE = range(7)


class StartMode(enum.Enum):
    """How a segment was obtained: freshly created (or re-initialised), or
    found with data that objects placed on it must keep."""

    INIT = 1
    RECOVER = 2


@dataclass(frozen=True)
class Placement:
    """One directory entry: an object of ``kind`` called ``name`` lives at
    ``offset`` and takes ``size`` bytes."""

    name: str
    kind: str
    offset: int
    size: int
    done: bool = True


def align_up(n: int, to: int = ALIGN) -> int:
    return (n + to - 1) // to * to


def _encode(text: str, width: int, what: str) -> bytes:
    raw = text.encode("utf-8")
    if not raw or len(raw) > width or b"\0" in raw:
        raise ValueError(f"{what} must be 1..{width} UTF-8 bytes without NUL, got {text!r}")
    return raw.ljust(width, b"\0")


def _decode(raw: bytes, what: str) -> str:
    try:
        return raw.rstrip(b"\0").decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptSegment(
            f"directory {what} is not UTF-8: {raw!r}", field=what, found=raw, expected="UTF-8"
        ) from None


class SegmentHeader:
    """Reads and writes the header of a segment held in ``mem``."""

    def __init__(self, mem: memoryview) -> None:
        if len(mem) < HEADER_SIZE:
            raise ValueError(f"a segment needs at least {HEADER_SIZE} bytes, got {len(mem)}")
        self._mem = mem
        self._words = mem[:DIRECTORY_OFFSET].cast("Q")

    def release(self) -> None:
        self._words.release()

    # -- plain fields ---------------------------------------------------------
    @property
    def ours(self) -> bool:
        """Does the segment start with our magic (whatever state it is in)?"""
        return self._words[_MAGIC] == MAGIC

    @property
    def generation(self) -> int:
        return self._words[_GENERATION]

    @property
    def ready(self) -> bool:
        return self._words[_READY] == READY

    @property
    def entries(self) -> int:
        return self._words[_ENTRIES]

    @property
    def recorded_size(self) -> int:
        return self._words[_SIZE]

    @property
    def last_mode(self) -> StartMode | None:
        try:
            return StartMode(self._words[_LAST_MODE])
        except ValueError:
            return None

    def record_start(self, mode: StartMode) -> None:
        """An owner started on this segment: count a generation."""
        self._words[_GENERATION] = (self._words[_GENERATION] + 1) % (1 << 64)
        self._words[_LAST_MODE] = mode.value

    # -- INIT -------------------------------------------------------------------
    def initialise(self) -> None:
        """Start a fresh, empty layout.  ``ready`` is cleared *first* and set
        *last*, so a crash in between is seen as an unfinished header."""
        w = self._words
        w[_READY] = 0
        w[_MAGIC] = MAGIC
        w[_VERSION] = LAYOUT_VERSION
        w[_SIZE] = len(self._mem)
        w[_ENTRIES] = 0
        w[_GENERATION] = 0
        w[_LAST_MODE] = 0
        w[7] = 0
        w[_READY] = READY

    def mark_done(self, index: int) -> None:
        """The object of entry ``index`` finished its INIT: the last write
        of that initialisation."""
        if not 0 <= index < min(self._words[_ENTRIES], MAX_ENTRIES):
            raise IndexError(index)
        base = DIRECTORY_OFFSET + index * ENTRY_SIZE + STATE_OFFSET
        self._mem[base : base + 8].cast("Q")[0] = DONE

    # -- checks -------------------------------------------------------------------
    def problem(self) -> str | None:
        """Why this header cannot be recovered, or None if it can.

        Only reads; every field is treated as untrusted."""
        w = self._words
        if w[_MAGIC] != MAGIC:
            return f"unknown magic {w[_MAGIC].to_bytes(8, 'little')!r} (not one of our segments?)"
        if w[_VERSION] != LAYOUT_VERSION:
            return f"layout version {w[_VERSION]} (this code writes {LAYOUT_VERSION})"
        if w[_SIZE] != len(self._mem):
            return f"header records size {w[_SIZE]} but the segment has {len(self._mem)} bytes"
        if w[_READY] != READY:
            return "the header's initialisation never completed (a crash during INIT?)"
        if w[_ENTRIES] > MAX_ENTRIES:
            return f"directory claims {w[_ENTRIES]} entries (at most {MAX_ENTRIES})"
        try:
            self.placements()
        except CorruptSegment as err:
            return str(err)
        return None

    # -- directory ------------------------------------------------------------------
    def placement(self, index: int) -> Placement:
        """Entry ``index``, bounds-checked against the segment and its neighbours."""
        count = self._words[_ENTRIES]
        if not 0 <= index < min(count, MAX_ENTRIES):
            raise IndexError(index)
        base = DIRECTORY_OFFSET + index * ENTRY_SIZE
        raw = bytes(self._mem[base : base + ENTRY_SIZE])
        name = _decode(raw[:NAME_BYTES], "name")
        state = int.from_bytes(raw[STATE_OFFSET : STATE_OFFSET + 8], "little")
        kind = _decode(raw[KIND_OFFSET : KIND_OFFSET + KIND_BYTES], "kind")
        offset = int.from_bytes(raw[48:56], "little")
        size = int.from_bytes(raw[56:64], "little")
        if state not in (0, DONE):
            raise CorruptSegment(
                f"directory entry {index} ({name!r}) has state {state:#x}, neither 0 nor DONE",
                field=f"directory[{index}].state",
                found=state,
                expected=(0, DONE),
            )
        low = HEADER_SIZE if index == 0 else self._end_of(index - 1)
        if offset % ALIGN or offset < low or offset + size > len(self._mem):
            raise CorruptSegment(
                f"directory entry {index} ({name!r}) claims bytes {offset}..{offset + size}, "
                f"outside {low}..{len(self._mem)} or not {ALIGN}-aligned",
                field=f"directory[{index}]",
                found=(offset, size),
                expected=(low, len(self._mem)),
            )
        return Placement(name, kind, offset, size, state == DONE)

    def _end_of(self, index: int) -> int:
        base = DIRECTORY_OFFSET + index * ENTRY_SIZE
        offset = int.from_bytes(self._mem[base + 48 : base + 56], "little")
        size = int.from_bytes(self._mem[base + 56 : base + 64], "little")
        return offset + size

    def placements(self) -> list[Placement]:
        count = min(self._words[_ENTRIES], MAX_ENTRIES)
        return [self.placement(i) for i in range(count)]

    def add_placement(self, name: str, kind: str, size: int) -> Placement:
        """Record the next object, right after the previous one, as not yet
        DONE (its INIT has yet to run)."""
        index = self._words[_ENTRIES]
        if index >= MAX_ENTRIES:
            raise SegmentFull(
                f"the directory holds at most {MAX_ENTRIES} objects; cannot place {name!r}",
                name=name,
            )
        start = HEADER_SIZE if index == 0 else align_up(self._end_of(index - 1))
        if size < 0 or start + size > len(self._mem):
            raise SegmentFull(
                f"{kind} {name!r} needs {size} bytes at offset {start}, but the segment has "
                f"{len(self._mem)} bytes; create the segment with a larger size",
                name=name,
                needed=start + size,
                size=len(self._mem),
            )
        entry = (
            _encode(name, NAME_BYTES, "name")
            + bytes(8)  # state: not DONE
            + _encode(kind, KIND_BYTES, "kind")
            + start.to_bytes(8, "little")
            + size.to_bytes(8, "little")
        )
        base = DIRECTORY_OFFSET + index * ENTRY_SIZE
        self._mem[base : base + ENTRY_SIZE] = entry
        self._words[_ENTRIES] = index + 1  # publish the entry after writing it
        return Placement(name, kind, start, size, done=False)

    def match_placement(self, index: int, name: str, kind: str, size: int) -> Placement:
        """RECOVER: the ``index``-th object placed must be the one recorded."""
        count = self._words[_ENTRIES]
        if index >= count:
            raise LayoutMismatch(
                f"this configuration places {kind} {name!r} as object #{index + 1}, but the "
                f"segment holds only {count} objects; start with the configuration that created "
                f"it, or remove the segment (python -m server clean) to start afresh",
                name=name,
                index=index,
            )
        found = self.placement(index)
        if (found.name, found.kind, found.size) != (name, kind, size):
            raise LayoutMismatch(
                f"object #{index + 1} in the segment is {found.kind} {found.name!r} of "
                f"{found.size} bytes, but this configuration places {kind} {name!r} of {size} "
                f"bytes; start with the configuration that created it, or remove the segment "
                f"(python -m server clean) to start afresh",
                name=name,
                index=index,
                expected=(name, kind, size),
                found=(found.name, found.kind, found.size),
            )
        return found
