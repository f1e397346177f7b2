"""The allocator: a segment (or any writable buffer) with a header, handing
out regions in order (pure: works on a plain ``bytearray``).

``SharedMemory`` is the allocator, the Python face of the original's
overridden ``operator new``.  Objects are placed one after another::

    with shm.placing(name, kind, size) as (region, mode):
        ...   # mode INIT: format ``region``;  mode RECOVER: validate, keep

and the end of the ``with`` block is the object's init-complete record: in
INIT it writes the directory entry's DONE state, the last write of that
object's initialisation (see ``server.core.header``).  There is nothing to
call once everything is placed, so a program that creates, places and
pushes, and is then killed, has left a segment the next start recovers.

Which mode each object gets, on an owner's start (``SHMFactory.create_product``)::

    segment new or re-made                      -> INIT, every object
    segment found (RECOVER), entry i DONE        -> RECOVER (the data is kept)
        entry i there but not DONE (a crash in
        the middle of its INIT)                  -> INIT, that object only
        no entry i (a crash before placing it)   -> INIT, recorded now

so a crash between two placements re-initialises only what never finished.
An entry recorded for another name, kind or size is ``LayoutMismatch``.  An
object is initialised in a found segment only while no other process is
attached (it may be the one initialising it); otherwise ``SegmentInUse``.

An *observer* (``owner=False``: a worker joining, the inspector) never
writes: an object that is not DONE is an error for it, and ``skip()`` steps
over an entry it does not want to open.

``place(name, kind, size)`` is the same for a raw region whose caller keeps
no state that needs formatting; ``check_all_placed()`` optionally checks, in
RECOVER, that no recorded object was left out.

``SharedMemory`` works on any writable buffer, so the allocator is tested on a
plain ``bytearray``; only ``SHMFactory`` talks to System V.

The System V side (creating, attaching, checking owners and modes) is
``server.ipc.shm.SHMFactory``; it hands the allocator the attached segment
as a ``Segment``: something that can ``detach()`` and ``stat()``.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from ..errors import CorruptSegment, Detached, LayoutMismatch, SegmentInUse
from .header import Placement, SegmentHeader, StartMode

log = logging.getLogger("server.shm")


class Segment(Protocol):
    """The attached segment behind a ``SharedMemory`` (see ``server.ipc.shm``)."""

    def detach(self) -> None: ...

    def stat(self) -> dict[str, Any]: ...


class SharedMemory:
    """A segment (or any writable buffer) with a header and an allocator.

    ``start_mode`` is the segment's: INIT if it is new (every object placed
    initialises), RECOVER if it was found (each object recovers, or
    initialises if its own INIT never finished: see the module docstring).
    ``owner=False`` opens it as an observer, which never writes.
    """

    def __init__(
        self,
        buffer: Any,
        start_mode: StartMode,
        *,
        key: int | None = None,
        segment: Segment | None = None,
        owner: bool = True,
    ) -> None:
        self._mem: memoryview | None = memoryview(buffer)
        if self._mem.format != "B" or self._mem.readonly:
            raise TypeError("SharedMemory needs a writable byte buffer")
        self.start_mode = start_mode
        self.owner = owner
        self.key = key
        self.modes: dict[str, StartMode] = {}  # each object placed so far: its own mode
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
                    expected="a complete header",
                )

    # -- allocation -------------------------------------------------------------
    @contextlib.contextmanager
    def placing(self, name: str, kind: str, size: int) -> Iterator[tuple[memoryview, StartMode]]:
        """Take the next ``size`` bytes for object ``name`` of ``kind``;
        yields the region and the object's own mode.  INIT: initialise the
        region inside the block; its normal end records the object DONE.
        An exception leaves it not DONE, to be initialised again next time."""
        mem = self._live()
        index = self._placed
        where, mode = self._claim(index, name, kind, size)
        self._placed += 1
        self.modes[name] = mode
        view = mem[where.offset : where.offset + where.size]
        self._releases.append(view.release)
        yield view, mode
        if mode is StartMode.INIT:
            self.header.mark_done(index)

    def place(self, name: str, kind: str, size: int) -> memoryview:
        """``placing`` for a raw region whose bytes need no formatting."""
        with self.placing(name, kind, size) as (view, _mode):
            return view

    def skip(self) -> Placement:
        """An observer steps over the next recorded object without opening it."""
        self._live()
        found = self.header.placement(self._placed)
        self._placed += 1
        return found

    def _claim(self, index: int, name: str, kind: str, size: int) -> tuple[Placement, StartMode]:
        if self.start_mode is StartMode.INIT:
            return self.header.add_placement(name, kind, size), StartMode.INIT
        if index < self.header.entries:
            found = self.header.match_placement(index, name, kind, size)
            if found.done:
                return found, StartMode.RECOVER
            why = "its initialisation never finished"
        else:
            found = None
            why = "it was never placed"
        if not self.owner:
            if found is None:
                self.header.match_placement(index, name, kind, size)  # raises: not recorded
            raise CorruptSegment(
                f"{kind} {name!r} in segment {key_text(self.key)} is not initialised ({why}); "
                f"the server that owns the segment initialises it when it starts",
                field=f"directory[{index}].state",
                found="not DONE",
                expected="DONE",
            )
        others = int(self.stat().get("attached", 0))
        if others > 0:
            raise SegmentInUse(
                f"{kind} {name!r} in segment {key_text(self.key)} must be initialised ({why}), "
                f"but {others} other process(es) are attached and one may be initialising it; "
                f"stop them (or let it finish), then start again",
                key=self.key,
                attached=others,
                problem=why,
            )
        log.warning(
            "segment %s: initialising %s %r again (%s); the objects before it are kept",
            key_text(self.key),
            kind,
            name,
            why,
        )
        if found is None:
            found = self.header.add_placement(name, kind, size)
        return found, StartMode.INIT

    def on_detach(self, release: Callable[[], None]) -> None:
        """Call ``release`` when the segment is detached (objects placed on
        it drop their views, so later use raises instead of touching
        unmapped memory)."""
        self._releases.append(release)

    def check_all_placed(self) -> None:
        """Optional, RECOVER: every object recorded was placed again (a
        configuration that places fewer would leave some unused)."""
        self._live()
        if self.start_mode is StartMode.RECOVER and self._placed < self.header.entries:
            raise LayoutMismatch(
                f"the segment holds {self.header.entries} objects but this configuration "
                f"placed {self._placed}; start with the configuration that created it, or "
                f"remove the segment (python -m server clean) to start afresh",
                expected=self.header.entries,
                found=self._placed,
            )

    def mark_ready(self) -> None:
        """Deprecated: nothing needs marking any more (each object records
        its own INIT); this only runs ``check_all_placed()``."""
        warnings.warn(
            "SharedMemory.mark_ready() is no longer needed: each placed object records its "
            "own initialisation; call check_all_placed() if you want the check it made",
            DeprecationWarning,
            stacklevel=2,
        )
        self.check_all_placed()

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
