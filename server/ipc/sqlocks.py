"""How a ``SharedQueue`` takes, gives back and repairs its two locks.

The lock rule is ``server.core.sharedring``'s: right after the semaphore is
ours (``server.ipc.semlock``: ``SEM_UNDO``, given back by the kernel when its
holder dies) the holder records its pid in the side's holder word, and
clears it right before giving the semaphore back.  A pid found there is a
holder that died inside: the counts it left are repaired (the ring's
``recover_producer`` / ``recover_consumer``) and every sleeper of the other
side is woken, since the dead one may have published without waking them.

``_take`` never waits (the quick path of a single push or pop); ``_lock``
waits its turn, up to a second even for a try-once call: the lock is held
for microseconds, and a timeout is about room and codes, not the lock.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

from ..core.allocator import key_text
from ..core.codering import CodeRing
from ..core.sharedring import POP, PUSH, QueueControl
from .crashpoints import CrashPoints
from .semlock import SemLock

log = logging.getLogger("server.sharedqueue")

SIDE_NAMES = {PUSH: "push", POP: "pop"}
LOCK_SPIN = 50e-6  # how long a busy lock is watched before sleeping in the kernel for it


class QueueParts:
    """What the halves of ``SharedQueue`` (its mixins) share, declared once:
    ``SharedQueue.__init__`` sets them."""

    key: int
    _pid: int
    _ctl: QueueControl
    _ring: CodeRing
    _push_lock: SemLock | None
    _pop_lock: SemLock | None
    _crash: CrashPoints | None
    _slot: int | None
    _asleep: int | None  # the side whose sleeper mask holds our bit
    _rung: dict[int, dict[int, int]]


class TwoLocks(QueueParts):
    """The locking half of ``SharedQueue`` (a mixin)."""

    if TYPE_CHECKING:  # SleepAndWake's, after us in the queue's bases

        def _wake(self, side: int, mask: int) -> None: ...

    def _the_lock(self, side: int) -> SemLock:
        lock = self._push_lock if side == PUSH else self._pop_lock
        if lock is None:
            raise ValueError("an observer's view of a shared queue cannot push or pop")
        return lock

    def _take(self, side: int) -> bool:
        """Take ``side``'s lock if it is free right now."""
        if self._ctl.holder(side) or not self._the_lock(side).try_acquire():
            return False
        self._acquired(side)
        return True

    def _lock(self, side: int, deadline: float | None) -> bool:
        """Take ``side``'s lock, waiting up to ``deadline`` (at least 1 s)."""
        lock = self._the_lock(side)
        if not (lock.try_acquire() or self._watch_holder(side, lock)):
            timeout = None if deadline is None else max(deadline - time.monotonic(), 1.0)
            if not lock.acquire(timeout):
                return False
        self._acquired(side)
        return True

    def _watch_holder(self, side: int, lock: SemLock) -> bool:
        """The lock is busy: it is held for a microsecond or so, much less
        than the kernel takes to put us to sleep and wake us.  Watch the
        holder word (no system call) for up to LOCK_SPIN, giving the core
        away between looks (the holder may be waiting for it), and try
        again when it clears.  False: still busy (or its holder died with
        the word set): wait in the kernel."""
        holder = self._ctl.holder
        clock = time.perf_counter
        end = clock() + LOCK_SPIN
        while clock() < end:
            os.sched_yield()
            if not holder(side) and lock.try_acquire():
                return True
        return False

    def _acquired(self, side: int) -> None:
        dead = self._ctl.begin(side, self._pid)
        if dead:
            self._repair(side, dead)
        if self._asleep == side:
            assert self._slot is not None
            self._ctl.wake_up(side, self._slot)
            self._asleep = None

    def _unlock(self, side: int) -> None:
        self._ctl.end(side)
        if self._crash is not None:
            self._crash.hit(f"{SIDE_NAMES[side]}.unlocking")
        self._the_lock(side).release()

    def mark(self, slot: int) -> int:
        """The last number recorded in mark slot ``slot`` (0: none yet;
        see ``SharedQueue.push_many``)."""
        self._lock(PUSH, None)  # settles a mark left pending by a dead writer
        try:
            return self._ctl.mark(slot)
        finally:
            self._unlock(PUSH)

    def _repair(self, side: int, dead: int) -> None:
        """The lock rule: the last holder of ``side`` died holding it."""
        if side == PUSH:
            self._ring.recover_producer()
            self._ctl.settle_mark(self._ring.tail)
        else:
            self._ring.recover_consumer()
        log.warning(
            "%s: pid %d died holding the %s lock (the kernel gave it back); its counts "
            "repaired, every sleeper woken",
            key_text(self.key),
            dead,
            SIDE_NAMES[side],
        )
        other = POP if side == PUSH else PUSH
        self._rung[other].clear()
        mask = self._ctl.sleepers(other)
        if mask:
            self._wake(other, mask)
