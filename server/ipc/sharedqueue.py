"""SharedQueue: a queue of codes for any number of unrelated processes.

::

    q = SharedQueue.open(key, capacity=1 << 20)  # any process, any order
    q.push(data, timeout=None) -> bool           # False at the timeout
    q.push_many(codes, timeout=None) -> int      # queued in order (all, unless it timed out)
    q.pop(timeout=None) -> bytes | None          # None at the timeout
    q.pop_many(max_codes, timeout=None) -> list[bytes]
    len(q); q.stats(); q.close(); SharedQueue.remove(key)
    q.peek(max_codes, start) -> (codes, end); q.commit(end)  # one reader: server.ipc.sqpeek
    q.push_many(codes, mark=(slot, seq)); q.mark(slot)       # a push and its number, one step

``timeout=0`` tries once; ``None`` waits as long as it takes.  One segment
(``key``, mode 0600, owner checked: ``server.ipc.shm``) holds one placed
object: a control block and a ``CodeRing`` (``server.core.sharedring``: the
layout, the lock rule, the sleep rule).  Two System V semaphores guard it,
the *push lock* (key ``key``) and the *pop lock* (key ``pop_lock_key(key)``,
recorded in the block), both taken with ``SEM_UNDO`` (``server.ipc.semlock``).

Opening.  Whoever comes first creates the push lock; every opener then
takes it, and the pop lock, *before* looking at the segment, so of several
processes starting at once exactly one creates the segment (INIT) and the
others find it complete (RECOVER); an INIT cut short by a crash is found
incomplete by the next opener and done again.  With both locks held the
opener checks every pending record, repairs what a dead holder left, and
claims a waiter slot with a doorbell (``server.ipc.doorbell``) in this
user's private folder.  A capacity other than the queue's is refused while
codes are pending in it (re-made when it is empty and nobody else has it).

Waiting never polls: a ``pop`` on an empty queue marks its slot asleep under
the pop lock and sleeps on its doorbell; each push that finds sleepers rings
them, once per sleep.  ``fileno()`` + ``prepare_wait()`` + ``finish_wait()``
do the same from a ``selectors`` loop.  A sleep also ends after SAFETY_WAKE
to look again: the one wake-up that can be late is that of a writer killed
between publishing and ringing, and the next writer's lock repairs that.
Over WAITER_SLOTS (64) processes may open a queue; those without a slot
sleep in steps (logged once).  One object per process (and thread): open
again after a ``fork``.  Crash points: ``server.ipc.crashpoints``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterable, Sequence
from itertools import islice

from ..core.codering import CodeRing
from ..core.header import HEADER_SIZE, StartMode, align_up
from ..core.placed import Allocator, InSegment
from ..core.ring import RECORD_HEADER, _pack_len, full_fence
from ..core.sharedring import (
    CONTROL_SIZE,
    POP,
    PUSH,
    QueueControl,
    shared_region_size,
)
from .crashpoints import CrashPoints
from .doorbell import Doorbell
from .procinfo import alive
from .semlock import SemLock, pop_lock_key
from .shm import SharedMemory, SHMFactory
from .sqfacts import QueueFacts, refuse_capacity_change, remove_queue
from .sqlocks import TwoLocks
from .sqpeek import PeekAndCommit
from .sqwaiting import SleepAndWake

__all__ = ["SharedQueue", "pop_lock_key", "CRASH_POINTS"]

log = logging.getLogger("server.sharedqueue")

NAME = "sharedqueue"
# locked: the lock is ours, nothing written; copying: half a record past the
# tail; copied: all written (or copied out), nothing counted; counted: the
# count stored, the tail (head) not moved; published: moved, nobody woken;
# unlocking: the holder word cleared, the semaphore not given back.
CRASH_POINTS = tuple(
    f"push.{p}" for p in ("locked", "copying", "copied", "counted", "published", "unlocking")
) + tuple(f"pop.{p}" for p in ("locked", "copied", "counted", "published", "unlocking"))


def segment_size(capacity: int) -> int:
    return HEADER_SIZE + align_up(shared_region_size(capacity))


class SharedQueue(TwoLocks, SleepAndWake, PeekAndCommit, QueueFacts, InSegment):
    """A many-writer, many-reader queue of codes (see the module docstring)."""

    KIND = "SharedQueue"

    @classmethod
    def open(cls, key: int, capacity: int = 1 << 20) -> SharedQueue:
        if not isinstance(key, int) or not 0 < key <= 0xFFFFFFFF:
            raise ValueError(f"a shared queue's key is 1..0xffffffff, got {key!r}")
        if not isinstance(capacity, int) or capacity < RECORD_HEADER + 1:
            raise ValueError(
                f"capacity must be at least {RECORD_HEADER + 1} bytes, got {capacity!r}"
            )
        crash = CrashPoints.from_env(CRASH_POINTS)
        push_lock, _ = SemLock.open(key, "push lock")
        pop_lock, _ = SemLock.open(pop_lock_key(key), "pop lock")
        push_lock.acquire()  # push first, then pop: the one order both are taken in
        try:
            pop_lock.acquire()
            try:
                refuse_capacity_change(key, capacity)
                layout = [(NAME, cls.KIND, shared_region_size(capacity))]
                shm = SHMFactory.create_product(key, segment_size(capacity), layout)
                try:
                    return cls(key, capacity, shm, push_lock, pop_lock, crash)
                except BaseException:
                    shm.detach()
                    raise
            finally:
                pop_lock.release()
        finally:
            push_lock.release()

    def __init__(
        self,
        key: int,
        capacity: int,
        shm: SharedMemory | None,
        push_lock: SemLock | None,
        pop_lock: SemLock | None,
        crash: CrashPoints | None = None,
        *,
        region: tuple[memoryview, bool] | None = None,
    ) -> None:
        """Use ``open``.  (Called with both locks held; an observer, the
        inspector, passes ``region`` and no locks.)"""
        self.key = key
        self.capacity = capacity
        self._shm = shm
        self._pid = os.getpid()
        self._push_lock = push_lock
        self._pop_lock = pop_lock
        self._crash = crash
        self._quick = crash is None and push_lock is not None  # no crash points: flat paths
        self._spin_misses = 0
        if crash is not None:
            crash.before_kill = self._half_done
        self._slot: int | None = None
        self._asleep: int | None = None  # the side whose mask holds our bit
        self._selecting = 0  # prepare_wait's marks (sqwaiting)
        self._bell: Doorbell | None = None
        self._poker: Doorbell | None = None  # rings the others (it need not listen)
        self._addresses: list[str] = []
        self._rung: dict[int, dict[int, int]] = {PUSH: {}, POP: {}}
        self._polls_logged = False
        self._staging: bytes = b""
        if region is None:
            assert shm is not None
            with shm.placing(NAME, self.KIND, shared_region_size(capacity)) as (mem, mode):
                self._on_region(mem, capacity, init=mode is StartMode.INIT, check=True)
            shm.on_detach(self.release)
            self._enter_both()
        else:
            mem, init = region
            self._on_region(mem, capacity, init=init, check=False)
        self.max_code = self._ring.max_code

    def _on_region(self, mem: memoryview, capacity: int, *, init: bool, check: bool) -> None:
        self._ctl = QueueControl(mem[:CONTROL_SIZE], capacity, pop_lock_key(self.key), init=init)
        self._ring = CodeRing(mem[CONTROL_SIZE:], capacity, init=init, check_records=check)

    def _enter_both(self) -> None:
        """Opening, both locks held: repair, and claim a waiter slot."""
        ctl = self._ctl
        for side in (PUSH, POP):
            dead = ctl.begin(side, self._pid)
            if dead:
                self._repair(side, dead)
        try:
            self._slot = ctl.claim_slot(self._pid, alive)
            if self._slot is not None:
                self._bell = Doorbell(self._bell_name(self._slot))
                self._bell.listen()
        finally:
            ctl.end(POP)
            ctl.end(PUSH)

    # -- pushing ---------------------------------------------------------------------
    def push(self, data: bytes, timeout: float | None = None) -> bool:
        """Queue one code; waits while the queue is full.  False at the
        timeout.  ``CodeTooLarge`` for a code that can never fit."""
        if self._quick and self._take(PUSH):  # the common case, flat
            try:
                done = self._ring.push(data)
                if done:
                    full_fence()  # the tail before the sleepers: the sleep rule
                    mask = self._ctl.sleepers(POP)
                    if mask:
                        self._wake(POP, mask)
            finally:
                self._unlock(PUSH)
            if done or timeout == 0:
                return done
        return self._push((data,), timeout) == 1

    def push_many(
        self,
        codes: Iterable[bytes],
        timeout: float | None = None,
        *,
        mark: tuple[int, int] | None = None,
    ) -> int:
        """Queue codes in order, as many per lock round trip as fit; waits
        for room for the rest.  Returns how many were queued: all of them,
        unless the timeout came first.

        ``mark=(slot, seq)``: code i carries number ``seq + i``, and the
        number of the last one queued is recorded in mark slot ``slot``
        in the same step as its push (``mark(slot)`` reads it), also when
        this process dies halfway (``server.core.sharedring``: marks)."""
        batch = codes if isinstance(codes, Sequence) else list(codes)
        return self._push(batch, timeout, mark) if batch else 0

    def _push(
        self, codes: Sequence[bytes], timeout: float | None, mark: tuple[int, int] | None = None
    ) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        ring, crash = self._ring, self._crash
        done = 0
        spun = False
        while True:
            if not self._lock(PUSH, deadline):
                return done
            sleep = spin = False
            try:
                if crash is not None:
                    crash.hit("push.locked")
                    self._staging = codes[done]
                    crash.hit("push.copying")
                end, n = ring.stage(islice(codes, done, None) if done else codes)
                if n:
                    if crash is not None:
                        crash.hit("push.copied")
                    ring.note_pushed(end, n)
                    if mark is not None:
                        self._ctl.mark_pending(mark[0], mark[1] + done + n - 1, end)
                    if crash is not None:
                        crash.hit("push.counted")
                    ring.store_tail(end)
                    if crash is not None:
                        crash.hit("push.published")
                    if mark is not None:
                        self._ctl.mark_published()
                    full_fence()  # the tail before the sleepers: the sleep rule
                    mask = self._ctl.sleepers(POP)
                    if mask:
                        self._wake(POP, mask)
                    done += n
                need = len(codes[done]) + RECORD_HEADER if done < len(codes) else 0
                if need and not _passed(deadline):
                    spin = not spun
                    sleep = spun and self._fall_asleep(PUSH, need)
            finally:
                self._unlock(PUSH)
            if spin:
                spun = True
                self._spin(PUSH, need)
                continue
            if done == len(codes) or (not sleep and _passed(deadline)):
                return done
            if sleep:
                self._sleep(deadline)
                spun = False
            # else the room came as we fell asleep: look again at once

    # -- popping ---------------------------------------------------------------------
    def pop(self, timeout: float | None = None) -> bytes | None:
        """Take the oldest code; waits while the queue is empty.  None at
        the timeout."""
        if self._quick and self._take(POP):  # the common case, flat
            try:
                code = self._ring.pop()
                if code is not None:
                    full_fence()  # the head before the sleepers
                    mask = self._ctl.sleepers(PUSH)
                    if mask:
                        self._wake(PUSH, mask)
            finally:
                self._unlock(POP)
            if code is not None or timeout == 0:
                return code
        out = self._pop(1, 1, timeout)
        return out[0] if out else None

    def pop_many(self, max_codes: int = 1 << 30, timeout: float | None = None) -> list[bytes]:
        """Take up to ``max_codes`` codes (about 1 MiB at most) in one lock
        round trip; waits for the first.  [] at the timeout."""
        if max_codes < 1:
            raise ValueError(f"max_codes must be at least 1, got {max_codes!r}")
        return self._pop(max_codes, 1 << 20, timeout)

    def _pop(self, max_codes: int, max_bytes: int, timeout: float | None) -> list[bytes]:
        deadline = None if timeout is None else time.monotonic() + timeout
        ring, crash = self._ring, self._crash
        spun = False
        while True:
            if not self._lock(POP, deadline):
                return []
            sleep = spin = False
            try:
                if crash is not None:
                    crash.hit("pop.locked")
                out, end = ring.peek_many(max_codes, max_bytes)
                if out:
                    if crash is not None:
                        crash.hit("pop.copied")
                    self._take_up_to(end, len(out))  # sqpeek
                    return out
                if not _passed(deadline):
                    spin = not spun
                    sleep = spun and self._fall_asleep(POP)
            finally:
                self._unlock(POP)
            if spin:
                spun = True
                self._spin(POP)
                continue
            if not sleep and _passed(deadline):
                return []
            if sleep:
                self._sleep(deadline)
                spun = False
            # else a code came as we fell asleep: look again at once

    def _half_done(self, point: str) -> None:
        """Crash point ``push.copying``: leave half a record past the tail,
        in free space only (as a real copy would: it never starts without room)."""
        if point == "push.copying" and self._staging:
            record = _pack_len(len(self._staging)) + bytes(self._staging)
            half = min(max(1, len(record) // 2), self._ring.room())
            self._ring.write_at(self._ring.tail, record[:half])

    # -- facts ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._ring)

    def close(self) -> None:
        """Give back our waiter slot, unbind our doorbell, detach."""
        if self._asleep is not None or self._selecting:
            with contextlib.suppress(Exception):
                self.finish_wait()
        if self._slot is not None:
            with contextlib.suppress(ValueError):
                self._ctl.leave_slot(self._slot, self._pid)
            self._slot = None
        for bell in (self._bell, self._poker):
            if bell is not None:
                bell.close()
        self._bell = self._poker = None
        if self._shm is not None:
            self._shm.detach()  # releases our views (on_detach)
            self._shm = None

    def release(self) -> None:
        self._ctl.release()
        self._ring.release()

    def __enter__(self) -> SharedQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the inspector opens it as a placed kind (server.core.placed) ----------
    @classmethod
    def place(
        cls, shm: Allocator, name: str, param: int = 0, *, observer: bool = False
    ) -> SharedQueue:
        if not observer or not isinstance(shm, SharedMemory):
            raise TypeError("a SharedQueue is made by SharedQueue.open; place() only observes")
        with shm.placing(name, cls.KIND, shared_region_size(param)) as (mem, mode):
            queue = cls(shm.key or 0, param, None, None, None, region=(mem, mode is StartMode.INIT))
        shm.on_detach(queue.release)
        return queue

    @staticmethod
    def remove(key: int) -> bool:
        """Remove the queue's segment, both semaphores and the doorbells;
        False if none was there.  ``SegmentInUse`` while a process has it open."""
        return remove_queue(key)


def _passed(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline
