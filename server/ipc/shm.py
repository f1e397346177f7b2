"""Shared memory: the factory that decides INIT vs RECOVER (System V).

``SHMFactory.create_product(key, size)`` is the owner's entry point::

    shmget(key, size, IPC_CREAT | IPC_EXCL | 0600)
        succeeds        -> INIT     (a new, empty segment)
        fails (EEXIST)  -> attach   -> header recoverable? -> RECOVER
                                       otherwise           -> INIT again, with a
                                                              warning saying why

"Otherwise" covers a size that differs *in either direction* (``shmget``
only fails when the existing segment is smaller than asked, so the real
size comes from ``IPC_STAT``), an unknown magic or layout version, a header
whose fields are out of range, and an INIT that crashed before the header
was complete.  A crash *after* that (between placing two objects, or in the
middle of one) is repaired object by object: see ``server.core.allocator``.
A segment that must be re-created while other processes are still attached
is refused (``SegmentInUse``): they would keep using the old memory.

Segments are created with mode 0600.  Attaching to a segment owned by another
user, or one that group or other may read or write, is refused: anyone who
can write the segment can inject codes.

``SharedMemory`` (``server.core.allocator``) is the allocator that places
objects in the segment; this module is the System V side of it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from typing import Any

import sysv_ipc

from ..core.allocator import SharedMemory, key_text
from ..core.header import HEADER_SIZE, SegmentHeader, StartMode
from ..errors import SegmentError, SegmentInUse, SegmentPermissionError
from .doorbell import remove_doorbells

__all__ = ["SHMFactory", "SharedMemory", "StartMode", "MODE"]

log = logging.getLogger("server.shm")

MODE = 0o600


class _Attached:
    """A ``sysv_ipc.SharedMemory`` as the allocator's ``Segment``."""

    def __init__(self, seg: Any) -> None:
        self.seg = seg

    def detach(self) -> None:
        with contextlib.suppress(sysv_ipc.NotAttachedError):
            self.seg.detach()

    def stat(self) -> dict[str, Any]:
        seg = self.seg
        return {
            "key": f"0x{seg.key & 0xFFFFFFFF:08x}",  # sysv_ipc reports key_t signed
            "id": seg.id,
            "size": seg.size,
            "mode": f"{seg.mode & 0o777:04o}",
            "uid": seg.uid,
            "attached": seg.number_attached - 1,  # the others: not this reader
            "creator_pid": seg.creator_pid,
            "last_pid": seg.last_pid,
        }


def _open(seg: Any, mode: StartMode, key: int, *, owner: bool = True) -> SharedMemory:
    return SharedMemory(seg, mode, key=key, segment=_Attached(seg), owner=owner)


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
                shm = _open(seg, StartMode.INIT, key)
                shm.header.record_start(StartMode.INIT)
                log.info("created segment %s (%d bytes): INIT", key_text(key), size)
                return shm
            seg = _attach(key)
            if seg is None:  # removed between our two calls: try creating again
                continue
            problem = _recover_problem(seg, size, layout)
            if problem is None:
                try:
                    shm = _open(seg, StartMode.RECOVER, key)
                except BaseException:
                    seg.detach()
                    raise
                shm.header.record_start(StartMode.RECOVER)
                log.info(
                    "attached segment %s (generation %d): RECOVER",
                    key_text(key),
                    shm.header.generation,
                )
                return shm
            others = seg.number_attached - 1
            if others > 0:
                seg.detach()
                raise SegmentInUse(
                    f"segment {key_text(key)} cannot be recovered ({problem}) and {others} "
                    f"other process(es) are attached to it; stop them first",
                    key=key,
                    attached=others,
                    problem=problem,
                )
            if seg.size == size:
                log.warning("re-initialising segment %s: %s", key_text(key), problem)
                shm = _open(seg, StartMode.INIT, key)
                shm.header.record_start(StartMode.INIT)
                return shm
            log.warning("re-creating segment %s: %s", key_text(key), problem)
            seg.remove()
            seg.detach()
        raise SegmentError(
            f"segment {key_text(key)} kept changing while we tried to create it; "
            f"is another server starting with the same key?",
            key=key,
        )

    @staticmethod
    def attach(key: int) -> SharedMemory:
        """Join a segment an owner has made (a worker process, or the
        inspector): an observer in mode RECOVER; nothing is written, and an
        object whose INIT never finished is an error, not re-made."""
        seg = _attach(key)
        if seg is None:
            raise SegmentError(
                f"no segment with key {key_text(key)}; is the server running?", key=key
            )
        try:
            return _open(seg, StartMode.RECOVER, key, owner=False)
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
    def identify(key: int) -> str | None:
        """None if segment ``key`` is one of ours (our magic in its header);
        otherwise what it is, in words.  Raises if there is none."""
        seg = _attach(key)
        if seg is None:
            raise SegmentError(f"no segment with key {key_text(key)}", key=key)
        try:
            size = seg.size
            if size < HEADER_SIZE:
                return f"a segment of {size} bytes, too small to be ours"
            mem = memoryview(seg)
            header = SegmentHeader(mem)
            try:
                if header.ours:
                    return None
                first = bytes(mem[:8])
            finally:
                header.release()
                mem.release()
            return f"a segment of {size} bytes that starts with {first!r}, not our magic"
        finally:
            seg.detach()

    @staticmethod
    def snapshot(key: int) -> bytes:
        """A copy of every byte of segment ``key`` (owner and mode checked
        as for ``attach``; the header is not read, so a corrupt one works)."""
        seg = _attach(key)
        if seg is None:
            raise SegmentError(f"no segment with key {key_text(key)}", key=key)
        try:
            return bytes(memoryview(seg))
        finally:
            seg.detach()

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
                f"segment {key_text(key)} is still attached by {others} process(es); "
                f"stop them before removing it",
                key=key,
                attached=others,
            )
        seg.remove()
        seg.detach()
        remove_doorbells(key)
        log.info("removed segment %s", key_text(key))
        return True


def _create(key: int, size: int) -> Any:
    try:
        return sysv_ipc.SharedMemory(key, sysv_ipc.IPC_CREX, mode=MODE, size=size)
    except sysv_ipc.ExistentialError:
        return None
    except (OSError, ValueError, sysv_ipc.Error) as err:
        raise SegmentError(
            f"cannot create a segment of {size} bytes with key {key_text(key)}: {err} "
            f"(check kernel.shmmax and kernel.shmall)",
            key=key,
            size=size,
        ) from None


def owner_problem(
    obj: Any, key: int, noun: str, risk: str, ipcrm: str
) -> SegmentPermissionError | None:
    """Why we refuse an existing System V object (a segment, a semaphore):
    another user owns it, or group or other may use it (``risk``: what they
    could do).  None: it is ours and private."""
    if obj.uid != os.geteuid():
        return SegmentPermissionError(
            f"{noun} {key_text(key)} belongs to uid {obj.uid}, not to us (uid "
            f"{os.geteuid()}); refusing to use it, pick another key",
            key=key,
            found=obj.uid,
            expected=os.geteuid(),
        )
    mode = obj.mode & 0o777
    if mode & 0o077:
        return SegmentPermissionError(
            f"{noun} {key_text(key)} has mode {mode:04o}: group or other may use it, so "
            f"{risk}; refusing it (remove it with ipcrm {ipcrm} {key}, or pick another key)",
            key=key,
            found=mode,
            expected=MODE,
        )
    return None


def _attach(key: int) -> Any:
    """Attach to an existing segment after checking who may use it; None if
    there is none."""
    try:
        seg = sysv_ipc.SharedMemory(key, 0)
    except sysv_ipc.ExistentialError:
        return None
    except sysv_ipc.PermissionsError:
        raise SegmentPermissionError(
            f"segment {key_text(key)} exists but we may not attach to it (another user's?); "
            f"pick another key",
            key=key,
        ) from None
    problem = owner_problem(seg, key, "segment", "anyone could inject codes", "-M")
    if problem is not None:
        seg.detach()
        raise problem
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
