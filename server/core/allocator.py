"""The allocator: a segment (or any writable buffer) with a header, handing
out regions in order (pure: works on a plain ``bytearray``).

``SharedMemory`` is the allocator, the Python face of the original's
overridden ``operator new``: ``place(name, kind, size)`` hands out the next
region of the segment, in order.  In INIT mode the region is new and the
caller initialises it; in RECOVER mode the placement must match the
directory entry recorded at INIT (see ``server.core.header``) and the caller only
validates what is there.  The owner calls ``mark_ready()`` once everything
is placed: in INIT that sets the header's ready flag, *last*; in RECOVER it
checks that no recorded object was left out.

``SharedMemory`` works on any writable buffer, so the allocator is tested on a
plain ``bytearray``; only ``SHMFactory`` talks to System V.

The System V side (creating, attaching, checking owners and modes) is
``server.ipc.shm.SHMFactory``; it hands the allocator the attached segment
as a ``Segment``: something that can ``detach()`` and ``stat()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from ..errors import CorruptSegment, Detached, LayoutMismatch
from .header import Placement, SegmentHeader, StartMode


class Segment(Protocol):
    """The attached segment behind a ``SharedMemory`` (see ``server.ipc.shm``)."""

    def detach(self) -> None: ...

    def stat(self) -> dict[str, Any]: ...


class SharedMemory:
    """A segment (or any writable buffer) with a header and an allocator.

    ``start_mode`` says whether placed objects initialise (INIT) or keep and
    validate (RECOVER) their region.
    """

    def __init__(
        self,
        buffer: Any,
        start_mode: StartMode,
        *,
        key: int | None = None,
        segment: Segment | None = None,
    ) -> None:
        self._mem: memoryview | None = memoryview(buffer)
        if self._mem.format != "B" or self._mem.readonly:
            raise TypeError("SharedMemory needs a writable byte buffer")
        self.start_mode = start_mode
        self.key = key
        self._segment = segment
        self.header = SegmentHeader(self._mem)
        self._placed = 0
        self._releases: list[Callable[[], None]] = [self.header.release]
        if start_mode is StartMode.INIT:
            self.header.initialise()
        else:
            problem = self.header.problem()
            if problem is not None:
                self._release_views()
                raise CorruptSegment(
                    f"cannot recover segment {key_text(key)}: {problem}",
                    field="header",
                    found=problem,
                    expected="a ready header",
                )

    # -- allocation -------------------------------------------------------------
    def place(self, name: str, kind: str, size: int) -> memoryview:
        """Hand out the next ``size`` bytes for object ``name`` of ``kind``.

        INIT records the placement; RECOVER checks it against the record.
        """
        mem = self._live()
        if self.start_mode is StartMode.INIT:
            if self.header.ready:
                raise LayoutMismatch(
                    f"cannot place {kind} {name!r}: the segment was already marked ready",
                    name=name,
                )
            where = self.header.add_placement(name, kind, size)
        else:
            where = self.header.match_placement(self._placed, name, kind, size)
        self._placed += 1
        view = mem[where.offset : where.offset + where.size]
        self._releases.append(view.release)
        return view

    def on_detach(self, release: Callable[[], None]) -> None:
        """Call ``release`` when the segment is detached (objects placed on
        it drop their views, so later use raises instead of touching
        unmapped memory)."""
        self._releases.append(release)

    def mark_ready(self) -> None:
        """Every object is placed.  INIT: set the ready flag (the last write
        of initialisation).  RECOVER: check nothing recorded was left out."""
        self._live()
        if self.start_mode is StartMode.INIT:
            self.header.mark_ready()
        elif self._placed != self.header.entries:
            raise LayoutMismatch(
                f"the segment holds {self.header.entries} objects but this configuration "
                f"placed {self._placed}; start with the configuration that created it, or "
                f"remove the segment (python -m server clean) to start afresh",
                expected=self.header.entries,
                found=self._placed,
            )

    # -- facts ----------------------------------------------------------------------
    @property
    def size(self) -> int:
        return len(self._live())

    @property
    def generation(self) -> int:
        self._live()
        return self.header.generation

    def placements(self) -> list[Placement]:
        self._live()
        return self.header.placements()

    def stat(self) -> dict[str, Any]:
        """What the kernel says of the segment (empty for a plain buffer)."""
        return {} if self._segment is None else self._segment.stat()

    # -- lifetime ---------------------------------------------------------------------
    @property
    def attached(self) -> bool:
        return self._mem is not None

    def _live(self) -> memoryview:
        if self._mem is None:
            raise Detached(f"segment {key_text(self.key)} was detached", key=self.key)
        return self._mem

    def _release_views(self) -> None:
        for release in reversed(self._releases):
            release()
        self._releases.clear()
        if self._mem is not None:
            self._mem.release()
        self._mem = None

    def detach(self) -> None:
        """Drop every view handed out, then detach.  The segment stays."""
        if self._mem is None:
            return
        self._release_views()
        if self._segment is not None:
            self._segment.detach()

    def __enter__(self) -> SharedMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def __repr__(self) -> str:
        state = "attached" if self._mem is not None else "detached"
        return f"<SharedMemory key={key_text(self.key)} {self.start_mode.name} {state}>"


def key_text(key: int | None) -> str:
    return "(buffer)" if key is None else f"0x{key & 0xFFFFFFFF:08x}"
