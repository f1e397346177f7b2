"""How the processes of a ``SharedQueue`` sleep and wake each other.

The sleep rule is ``server.core.sharedring``'s: a sleeper marks its slot
asleep under its side's lock, fences, and looks at the ring once more; a
waker publishes, fences, and rings every marked slot not rung yet for its
current sleep.  Doorbells are ``server.ipc.doorbell``'s, one per waiter slot
(``stcp-k<key>-sq<slot>.sock`` in this user's private folder).  A slot that
nobody answers for is a sleeper that was killed: its bit is cleared when
its side's lock is free (``_clear_gone``), never waited for, since the
waker may hold the other lock.
"""

from __future__ import annotations

import logging
import os
import select
import time
from typing import TYPE_CHECKING

from ..core.allocator import key_text
from ..core.sharedring import POP, PUSH, WAITER_SLOTS
from ..errors import SegmentError
from .doorbell import Doorbell, doorbell_name, run_dir
from .procinfo import alive
from .sqlocks import QueueParts

log = logging.getLogger("server.sharedqueue")

SAFETY_WAKE = 0.25
SPIN = 50e-6  # how long a waiter watches the ring before it sleeps
SPIN_GIVE_UP = 4  # fruitless spins in a row, then only every 16th sleep spins first


class SleepAndWake(QueueParts):
    """The waiting half of ``SharedQueue`` (a mixin)."""

    _bell: Doorbell | None
    _poker: Doorbell | None
    _addresses: list[str]
    _polls_logged: bool
    _spin_misses: int
    _selecting: int  # bit 1 << side: marked asleep for a selectors loop (prepare_wait)

    if TYPE_CHECKING:  # TwoLocks', before us in the queue's bases

        def _lock(self, side: int, deadline: float | None) -> bool: ...

        def _unlock(self, side: int) -> None: ...

        def _repair(self, side: int, dead: int) -> None: ...

    def _bell_name(self, slot: int) -> str:
        return doorbell_name(self.key, f"sq{slot}")

    # -- sleeping and waking -------------------------------------------------------------
    def _fall_asleep(self, side: int, need: int = 0) -> bool:
        """``side``'s lock held: mark our slot asleep, then look again (POP:
        is the queue still empty?  PUSH: are fewer than ``need`` bytes still
        free?).  True: sleep."""
        if self._slot is None:
            if not self._polls_logged:
                self._polls_logged = True
                log.warning(
                    "%s: all %d waiter slots are taken by live processes; this one waits by "
                    "sleeping in steps",
                    key_text(self.key),
                    WAITER_SLOTS,
                )
            return True
        self._ctl.fall_asleep(side, self._slot)
        if self._ring.empty() if side == POP else self._ring.room() < need:
            self._asleep = side
            return True
        self._ctl.wake_up(side, self._slot)
        return False

    def _spin(self, side: int, need: int = 0) -> bool:
        """No lock held, about to sleep: watch the ring for up to SPIN,
        giving the core away between looks (the peer may need it: two
        cores, several processes).  True: what we wait for came (POP:
        codes; PUSH: ``need`` bytes of room).  A sleep costs a wake-up
        on each side, tens of µs; a spin pays when the answer is near."""
        misses = self._spin_misses
        if misses >= SPIN_GIVE_UP and misses % 16:
            self._spin_misses = misses + 1
            return False
        ring = self._ring
        clock = time.perf_counter
        end = clock() + SPIN
        while True:
            if (not ring.empty()) if side == POP else ring.room() >= need:
                self._spin_misses = 0
                return True
            if clock() >= end:
                self._spin_misses = misses + 1
                return False
            os.sched_yield()

    def _sleep(self, deadline: float | None) -> None:
        now = time.monotonic()
        left = SAFETY_WAKE if deadline is None else min(SAFETY_WAKE, deadline - now)
        if self._bell is None:  # no slot: steps
            time.sleep(max(0.0, min(left, 0.005)))
            return
        if left > 0:
            select.select([self._bell.fileno()], [], [], left)
        self._bell.drain()

    def _wake(self, side: int, mask: int) -> None:
        """Ring the sleepers of ``side`` (POP: those waiting for codes)."""
        if not self._addresses:
            folder = run_dir()
            self._addresses = [
                os.path.join(folder, self._bell_name(s)) for s in range(WAITER_SLOTS)
            ]
        poker = self._poker
        if poker is None:
            poker = self._poker = self._bell or Doorbell(self._bell_name(WAITER_SLOTS))
        gone = [
            slot
            for slot in self._ctl.to_ring(mask, self._rung[side])
            if poker.poke(self._addresses[slot]) is None
        ]
        if gone:
            self._clear_gone(side, gone)

    def _clear_gone(self, side: int, slots: list[int]) -> None:
        """Sleepers of ``side`` nobody answers for: clear their bits if their
        processes are gone, when that side's lock is free right now (we may
        hold the other one: never wait for it)."""
        lock = self._push_lock if side == PUSH else self._pop_lock
        assert lock is not None
        if not lock.try_acquire():
            return
        ctl = self._ctl
        try:
            dead = ctl.begin(side, self._pid)
            if dead:
                self._repair(side, dead)
            for slot in slots:
                ctl.clear_dead(side, slot, alive)
        finally:
            ctl.end(side)
            lock.release()

    # -- a selectors loop ------------------------------------------------------------------
    def fileno(self) -> int:
        """This process's doorbell, for a ``selectors`` loop: call
        ``prepare_wait()`` before selecting on it, ``finish_wait()`` after."""
        if self._bell is None or self._slot is None:
            raise SegmentError(
                f"shared queue {key_text(self.key)}: all {WAITER_SLOTS} waiter slots are taken "
                f"by live processes, so this one has no doorbell to select on",
                key=self.key,
            )
        return self._bell.fileno()

    def prepare_wait(self, room: int | None = None) -> bool:
        """About to sleep until a code is there (or, with ``room``, until
        that many bytes are free).  False: no need, it is there already.

        The mark stays until ``finish_wait``, whatever this process does
        with the queue meanwhile (a relay pushes and commits while it
        waits), unlike a blocking call's, which its next lock clears."""
        self.fileno()
        side = POP if room is None else PUSH
        self._lock(side, None)
        try:
            asleep = self._fall_asleep(POP) if room is None else self._fall_asleep(PUSH, room)
            if asleep:
                self._asleep = None
                self._selecting |= 1 << side
            return asleep
        finally:
            self._unlock(side)

    def finish_wait(self) -> None:
        if self._bell is not None:
            self._bell.drain()
        for side in (POP, PUSH):
            if self._selecting & (1 << side):
                self._selecting &= ~(1 << side)
                self._lock(side, None)
                try:
                    assert self._slot is not None
                    self._ctl.wake_up(side, self._slot)
                finally:
                    self._unlock(side)
        if self._asleep is not None:
            side = self._asleep
            self._lock(side, None)  # clears our bit
            self._unlock(side)
