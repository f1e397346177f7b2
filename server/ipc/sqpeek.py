"""Taking codes only once the work on them is done: ``peek`` and ``commit``.

For the one reader of a ``SharedQueue`` whose codes must stay in shared
memory until it has finished with them: a bus relay sends a message to
another host and takes it out of its outbox only when that host says it
applied it.  ``peek`` copies codes out without taking them and returns the
stream position after them; a later ``peek(start=that position)`` goes on
from there; ``commit(position)`` takes every code before it, in one step
(the head moves, the count follows, as a pop's do: ``server.core.ring``).
Positions are absolute stream offsets, so they stay valid while writers
go on pushing.  Both take the pop lock; neither waits for codes.

Only one process should read a queue this way: a ``pop`` by another
between a peek and its commit would make the commit's position stale (it
is refused, not obeyed: ``commit`` checks that the position lies on a record
boundary between the head and the tail).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.ring import full_fence
from ..core.sharedring import POP, PUSH
from .sqlocks import QueueParts


class PeekAndCommit(QueueParts):
    """The peeking half of ``SharedQueue`` (a mixin)."""

    if TYPE_CHECKING:  # TwoLocks' and SleepAndWake's, in the queue's bases

        def _lock(self, side: int, deadline: float | None) -> bool: ...

        def _unlock(self, side: int) -> None: ...

        def _wake(self, side: int, mask: int) -> None: ...

        def fileno(self) -> int: ...

        _selecting: int

    def peek(
        self, max_codes: int = 1 << 30, start: int | None = None, max_bytes: int = 1 << 20
    ) -> tuple[list[bytes], int]:
        """Up to ``max_codes`` codes from ``start`` (None: the oldest), not
        taken; and the position after them.  [] if there are none (yet)."""
        self._lock(POP, None)
        try:
            return self._ring.peek_many(max_codes, max_bytes, start)
        finally:
            self._unlock(POP)

    def peek_records(self, start: int, max_bytes: int = 1 << 18) -> tuple[bytes, int, int]:
        """The codes from ``start`` as they lie in the ring (``u32 length,
        little-endian | code`` each): (bytes, how many, position after)."""
        self._lock(POP, None)
        try:
            return self._ring.peek_records(start, max_bytes)
        finally:
            self._unlock(POP)

    def commit(self, end: int) -> int:
        """Take every code before position ``end`` (from ``peek``); returns
        how many that was."""
        self._lock(POP, None)
        try:
            ring = self._ring
            count = ring.records_between(ring.head, end)
            if count:
                self._take_up_to(end, count)
            return count
        finally:
            self._unlock(POP)

    def _take_up_to(self, end: int, count: int) -> None:
        """Pop lock held: consume the ``count`` codes before ``end`` (checked
        by the caller) and wake the writers waiting for room."""
        ring, crash = self._ring, self._crash
        ring.note_popped(end, count)
        if crash is not None:
            crash.hit("pop.counted")
        ring.store_head(end)
        if crash is not None:
            crash.hit("pop.published")
        full_fence()  # the head before the sleepers
        mask = self._ctl.sleepers(PUSH)
        if mask:
            self._wake(PUSH, mask)

    def positions(self) -> tuple[int, int]:
        """The stream positions of the head and the tail, right now."""
        self._lock(POP, None)
        try:
            return self._ring.head, self._ring.tail
        finally:
            self._unlock(POP)

    def taken(self) -> int:
        """How many codes were taken from the queue, ever (exact: a dead
        reader's half-counted pop is repaired)."""
        self._lock(POP, None)
        try:
            return int(self._ring.stats()["popped"])
        finally:
            self._unlock(POP)

    def prepare_peek_wait(self, start: int) -> bool:
        """About to sleep on ``fileno()`` until a code is pushed past
        ``start`` (the end of a peek: the codes before it may still be
        there, peeked, not committed).  False: one is there already.
        ``finish_wait()`` after the sleep."""
        self.fileno()
        self._lock(POP, None)
        try:
            assert self._slot is not None
            self._ctl.fall_asleep(POP, self._slot)
            if self._ring.tail > start:
                self._ctl.wake_up(POP, self._slot)
                return False
            self._selecting |= 1 << POP  # until finish_wait (see prepare_wait)
            return True
        finally:
            self._unlock(POP)
