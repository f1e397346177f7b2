"""Shared memory: the factory that decides INIT vs RECOVER, and the allocator.

``SHMFactory.create_product(key, size)`` is the owner's entry point::

    shmget(key, size, IPC_CREAT | IPC_EXCL | 0600)
        succeeds        -> INIT     (a new, empty segment)
        fails (EEXIST)  -> attach   -> header recoverable? -> RECOVER
                                       otherwise           -> INIT again, with a
                                                              warning saying why

"Otherwise" covers a size that differs *in either direction* (``shmget``
only fails when the existing segment is smaller than asked, so the real
size comes from ``IPC_STAT``), an unknown magic or layout version, a header
whose fields are out of range, and an INIT that crashed before it completed.
A segment that must be re-created while other processes are still attached
is refused (``SegmentInUse``): they would keep using the old memory.

Segments are created with mode 0600.  Attaching to a segment owned by another
user, or one that group or other may read or write, is refused: anyone who
can write the segment can inject codes.

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
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import sysv_ipc

from ..core.header import HEADER_SIZE, Placement, SegmentHeader, StartMode
from ..errors import (
    CorruptSegment,
    Detached,
    LayoutMismatch,
    SegmentError,
    SegmentInUse,
    SegmentPermissionError,
)

__all__ = ["SHMFactory", "SharedMemory", "StartMode", "MODE"]

log = logging.getLogger("server.shm")

MODE = 0o600


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
        segment: Any = None,
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
                    f"cannot recover segment {_key_text(key)}: {problem}",
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
        seg = self._segment
        if seg is None:
            return {}
        return {
            "key": seg.key,
            "id": seg.id,
            "size": seg.size,
            "mode": f"{seg.mode & 0o777:04o}",
            "uid": seg.uid,
            "attached": seg.number_attached,
            "creator_pid": seg.creator_pid,
            "last_pid": seg.last_pid,
        }

    # -- lifetime ---------------------------------------------------------------------
    @property
    def attached(self) -> bool:
        return self._mem is not None

    def _live(self) -> memoryview:
        if self._mem is None:
            raise Detached(f"segment {_key_text(self.key)} was detached", key=self.key)
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
            with contextlib.suppress(sysv_ipc.NotAttachedError):
                self._segment.detach()

    def __enter__(self) -> SharedMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def __repr__(self) -> str:
        state = "attached" if self._mem is not None else "detached"
        return f"<SharedMemory key={_key_text(self.key)} {self.start_mode.name} {state}>"


def _key_text(key: int | None) -> str:
    return "(buffer)" if key is None else f"0x{key & 0xFFFFFFFF:08x}"


class SHMFactory:
    """Creates, attaches and removes System V segments."""

    @staticmethod
    def create_product(
        key: int, size: int, layout: Sequence[tuple[str, str, int]] | None = None
    ) -> SharedMemory:
        """The owner's start: INIT if the segment is new (or must be re-made),
        RECOVER if a complete one of the same size and layout is there.

        ``layout`` optionally lists the (name, kind, size) of every object
        the caller will place: a segment laid out otherwise is then treated
        like one of the wrong size (re-made if nobody else uses it) instead of
        failing later, at ``place``, with ``LayoutMismatch``.
        """
        if size < HEADER_SIZE:
            raise ValueError(f"segment size must be at least {HEADER_SIZE} bytes, got {size!r}")
        for _attempt in range(3):
            seg = _create(key, size)
            if seg is not None:
                shm = SharedMemory(seg, StartMode.INIT, key=key, segment=seg)
                shm.header.record_start(StartMode.INIT)
                log.info("created segment %s (%d bytes): INIT", _key_text(key), size)
                return shm
            seg = _attach(key)
            if seg is None:  # removed between our two calls: try creating again
                continue
            problem = _recover_problem(seg, size, layout)
            if problem is None:
                try:
                    shm = SharedMemory(seg, StartMode.RECOVER, key=key, segment=seg)
                except BaseException:
                    seg.detach()
                    raise
                shm.header.record_start(StartMode.RECOVER)
                log.info(
                    "attached segment %s (generation %d): RECOVER",
                    _key_text(key),
                    shm.header.generation,
                )
                return shm
            others = seg.number_attached - 1
            if others > 0:
                seg.detach()
                raise SegmentInUse(
                    f"segment {_key_text(key)} cannot be recovered ({problem}) and {others} "
                    f"other process(es) are attached to it; stop them first",
                    key=key,
                    attached=others,
                    problem=problem,
                )
            if seg.size == size:
                log.warning("re-initialising segment %s: %s", _key_text(key), problem)
                shm = SharedMemory(seg, StartMode.INIT, key=key, segment=seg)
                shm.header.record_start(StartMode.INIT)
                return shm
            log.warning("re-creating segment %s: %s", _key_text(key), problem)
            seg.remove()
            seg.detach()
        raise SegmentError(
            f"segment {_key_text(key)} kept changing while we tried to create it; "
            f"is another server starting with the same key?",
            key=key,
        )

    @staticmethod
    def attach(key: int) -> SharedMemory:
        """Join a segment an owner has made ready (a worker process, or the
        inspector).  Mode RECOVER; nothing is written."""
        seg = _attach(key)
        if seg is None:
            raise SegmentError(
                f"no segment with key {_key_text(key)}; is the server running?", key=key
            )
        try:
            return SharedMemory(seg, StartMode.RECOVER, key=key, segment=seg)
        except BaseException:
            seg.detach()
            raise

    @staticmethod
    def attached_elsewhere(key: int) -> int:
        """How many other processes are attached to segment ``key`` (0 if
        there is none).  Reads no header: works on a corrupt segment too."""
        seg = _attach(key)
        if seg is None:
            return 0
        others: int = seg.number_attached - 1
        seg.detach()
        return others

    @staticmethod
    def exists(key: int) -> bool:
        try:
            sysv_ipc.SharedMemory(key, 0).detach()
        except sysv_ipc.ExistentialError:
            return False
        except sysv_ipc.PermissionsError:
            return True
        return True

    @staticmethod
    def remove(key: int) -> bool:
        """Remove the segment; False if there was none.  Refused while any
        other process is attached (they would keep the memory alive)."""
        seg = _attach(key)
        if seg is None:
            return False
        others = seg.number_attached - 1
        if others > 0:
            seg.detach()
            raise SegmentInUse(
                f"segment {_key_text(key)} is still attached by {others} process(es); "
                f"stop them before removing it",
                key=key,
                attached=others,
            )
        seg.remove()
        seg.detach()
        log.info("removed segment %s", _key_text(key))
        return True


def _create(key: int, size: int) -> Any:
    try:
        return sysv_ipc.SharedMemory(key, sysv_ipc.IPC_CREX, mode=MODE, size=size)
    except sysv_ipc.ExistentialError:
        return None
    except (OSError, ValueError, sysv_ipc.Error) as err:
        raise SegmentError(
            f"cannot create a segment of {size} bytes with key {_key_text(key)}: {err} "
            f"(check kernel.shmmax and kernel.shmall)",
            key=key,
            size=size,
        ) from None


def _attach(key: int) -> Any:
    """Attach to an existing segment after checking who may use it; None if
    there is none."""
    try:
        seg = sysv_ipc.SharedMemory(key, 0)
    except sysv_ipc.ExistentialError:
        return None
    except sysv_ipc.PermissionsError:
        raise SegmentPermissionError(
            f"segment {_key_text(key)} exists but we may not attach to it (another user's?); "
            f"pick another key",
            key=key,
        ) from None
    if seg.uid != os.geteuid():
        seg.detach()
        raise SegmentPermissionError(
            f"segment {_key_text(key)} belongs to uid {seg.uid}, not to us (uid "
            f"{os.geteuid()}); refusing to use it, pick another key",
            key=key,
            found=seg.uid,
            expected=os.geteuid(),
        )
    mode = seg.mode & 0o777
    if mode & 0o077:
        seg.detach()
        raise SegmentPermissionError(
            f"segment {_key_text(key)} has mode {mode:04o}: group or other may use it, so "
            f"anyone could inject codes; refusing it (remove it with ipcrm -M {key}, or pick "
            f"another key)",
            key=key,
            found=mode,
            expected=MODE,
        )
    return seg


def _recover_problem(
    seg: Any, size: int, layout: Sequence[tuple[str, str, int]] | None
) -> str | None:
    if seg.size != size:
        return f"the segment has {seg.size} bytes but this configuration needs {size}"
    if seg.size < HEADER_SIZE:
        return f"the segment has only {seg.size} bytes"
    mem = memoryview(seg)
    header = SegmentHeader(mem)
    try:
        problem = header.problem()
        if problem is None and layout is not None:
            found = [(p.name, p.kind, p.size) for p in header.placements()]
            wanted = [(n, k, s) for n, k, s in layout]
            if found != wanted:
                problem = f"the layout changed: the segment holds {found}, this configuration places {wanted}"
        return problem
    finally:
        header.release()
        mem.release()
