"""CodeQueue: a ring of codes placed in shared memory, with a doorbell.

``CodeQueue(shm, capacity, name)`` takes the next region of ``shm`` (see
``SharedMemory.placing``; ``CodeQueue.place(shm, name, capacity)`` is the
same, spelled as every placed kind spells it, see ``server.core.placed``).
In INIT mode it formats the region, and only then is it recorded as
initialised; in RECOVER mode it leaves the data alone and validates it, so
the codes a crashed process left behind are still there.  The byte layout and the commit rule are in
``server.core.ring``; this module adds the sleeping consumer.

How a consumer sleeps without losing a wake-up::

    consumer                              producer
    --------                              --------
    spin briefly while empty              write record, publish tail
    sleeping = 1                          if sleeping and not rung for this
                                             sleep yet: ring the doorbell
    full fence
    if not empty: sleeping = 0, go on
    wait on the doorbell fd, GRACE (1 ms) at most the first time,
    then up to SAFETY_WAKE (1 s), sleeping staying 1 all along
    drain it, sleeping = 0, re-check

The consumer's fence makes ``sleeping = 1`` visible before it looks at the
tail.  The producer has no fence (it would cost a third of a push): x86 may
let its load of ``sleeping`` pass its own store of the tail, so in a window
of some nanoseconds around the moment the consumer falls asleep a push can
miss the flag.  The first wait is therefore at most GRACE long: such a push
is found within a millisecond, and every push after that window sees
``sleeping = 1`` and rings.  A sleep never lasts longer than SAFETY_WAKE
before the queue is looked at again, so not even a lost datagram can stall
it.  An idle consumer wakes about once a second: no busy polling.

One producer and one consumer.  Whoever takes a role in a new process calls
``recover_producer()`` or ``recover_consumer()`` once: it repairs that side's
statistics after a crash and clears a sleeping flag left set by a dead
consumer.  The doorbell is a Unix socket in a folder only this user may use
(``server.ipc.doorbell``).
"""

from __future__ import annotations

import os
import select
import time
from typing import Any

from ..core.codering import CodeRing
from ..core.header import StartMode
from ..core.placed import Allocator, InSegment
from ..core.ring import CONTROL_SIZE, full_fence, region_size
from .doorbell import Doorbell, doorbell_name
from .shm import SharedMemory

__all__ = ["CodeQueue", "region_size"]

SAFETY_WAKE = 1.0
GRACE = 1e-3
DEFAULT_SPIN = 50e-6


class CodeQueue(InSegment):
    """A single-producer single-consumer queue of codes (``bytes``)."""

    KIND = "CodeQueue"

    def __init__(
        self,
        shm: SharedMemory,
        capacity: int,
        name: str = "codequeue",
        *,
        check_records: bool = True,
    ) -> None:
        """``check_records=False`` skips walking the pending records in
        RECOVER mode: for an observer (the inspector) attaching while both
        sides run and the records move under its feet."""
        self.name = name
        with shm.placing(name, self.KIND, region_size(capacity)) as (region, mode):
            init = mode is StartMode.INIT
            self._ring = CodeRing(region, capacity, init=init, check_records=check_records)
        self.ring = self._ring  # for the step journal, which reads head and tail
        self.capacity = capacity
        self.max_code = self._ring.max_code
        self.doorbell = Doorbell(doorbell_name(shm.key, name))
        self._ring.waker = self.doorbell.ring  # no fence: see GRACE above
        shm.on_detach(self.close)
        # Bind the hot methods once: they are called per code.
        # push(code) -> bool: False when it does not fit now; CodeTooLarge
        # for a code that never could.  push_many(codes) -> how many fit.
        self.push = self._ring.push
        self.push_many = self._ring.push_many
        self.pop = self._ring.pop
        self.peek = self._ring.peek
        self.pop_many = self._ring.pop_many
        self.peek_many = self._ring.peek_many
        self.peek_views = self._ring.peek_views
        self.commit_head = self._ring.commit_head
        self.empty = self._ring.empty
        self.room = self._ring.room

    # -- a placed kind (server.core.placed) ----------------------------------------
    @classmethod
    def region_size(cls, param: int = 0) -> int:
        return region_size(param)

    @classmethod
    def param_of(cls, size: int) -> int:
        return size - CONTROL_SIZE

    @classmethod
    def place(
        cls, shm: Allocator, name: str, param: int = 0, *, observer: bool = False
    ) -> CodeQueue:
        if not isinstance(shm, SharedMemory):
            raise TypeError(
                f"a CodeQueue is placed on a SharedMemory (its doorbell is named after the "
                f"segment's key), got {shm!r}"
            )
        return cls(shm, param, name, check_records=not observer)

    def release(self) -> None:
        self.close()

    def report(self, name: str) -> dict[str, Any]:
        return {"queues": {name: self.stats()}}

    # -- producer ---------------------------------------------------------------
    def recover_producer(self) -> None:
        self._ring.recover_producer()

    # -- consumer ---------------------------------------------------------------
    def recover_consumer(self) -> None:
        self._ring.recover_consumer()
        self.doorbell.drain()

    def fileno(self) -> int:
        """The doorbell descriptor, for a ``selectors`` loop.  Before
        selecting on it call ``prepare_wait()``; after, ``finish_wait()``."""
        return self.doorbell.fileno()

    def prepare_wait(self, read: int | None = None) -> bool:
        """Announce that the consumer is about to sleep.  False means codes
        arrived meanwhile: do not sleep, pop them.  True: wait on
        ``fileno()``, at most GRACE seconds the first time (see above), then
        call ``finish_wait()``.  ``read``: the consumer peeks ahead of the
        head (``peek_many(start=...)``) and has seen every code before this
        position; it waits for codes past it."""
        ring = self._ring
        self.doorbell.listen()
        ring.set_sleeping(True)
        full_fence()
        if ring.tail != (ring.head if read is None else read):
            ring.set_sleeping(False)
            return False
        return True

    def finish_wait(self) -> None:
        self.doorbell.drain()
        self._ring.set_sleeping(False)

    def wait(self, timeout: float | None = None, spin: float = DEFAULT_SPIN) -> bool:
        """Block until a code is pending or ``timeout`` seconds pass.
        Returns True if a code is pending.  Spins for ``spin`` seconds first
        (cheap when the producer is busy), then sleeps on the doorbell."""
        ring = self._ring
        if not ring.empty():
            return True
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        spin_until = now + spin if timeout is None else min(now + spin, now + timeout)
        while time.monotonic() < spin_until:
            if not ring.empty():
                return True
            os.sched_yield()  # two cores: give way to the producer if it waits for one
        fd = self.fileno()
        if not self.prepare_wait():
            return True
        try:
            step = GRACE
            while True:
                left = step
                if deadline is not None:
                    left = min(left, deadline - time.monotonic())
                if left > 0:
                    select.select([fd], [], [], left)
                self.doorbell.drain()
                if not ring.empty():
                    return True
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                step = SAFETY_WAKE
        finally:
            ring.set_sleeping(False)

    # -- facts --------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        """capacity, used_bytes, free_bytes, pending, pushed, popped, head, tail."""
        return self._ring.stats()

    def __len__(self) -> int:
        return len(self._ring)

    def close(self) -> None:
        """Drop the views of shared memory and the doorbell sockets."""
        self.doorbell.close()
        self._ring.release()

    def __repr__(self) -> str:
        s = self._ring.stats()
        return f"<CodeQueue {self.name!r} {s['pending']} pending, {s['used_bytes']}/{self.capacity} bytes>"
