"""What a ``SharedQueue`` tells about itself, and the check on opening it
with another capacity.

``stats()`` adds to the ring's counts the state of both locks (free, or
held by pid N and whether N is alive; a holder word left by a dead holder
shows as "free; pid N died holding it", repaired by the next holder), the
repairs made so far, and the waiter slots.  Every pid shown was read from
shared memory: it is judged with ``alive``, never trusted.
"""

from __future__ import annotations

import logging
from typing import Any

from ..core.allocator import key_text
from ..core.sharedring import POP, PUSH, shared_region_size
from ..errors import ConfigError, CorruptSegment, SegmentError
from .doorbell import remove_doorbells
from .procinfo import alive
from .semlock import SemLock, lock_exists, pop_lock_key, remove_lock
from .shm import SHMFactory
from .sqlocks import QueueParts

log = logging.getLogger("server.sharedqueue")


class QueueFacts(QueueParts):
    """The facts half of ``SharedQueue`` (a mixin)."""

    capacity: int

    def __repr__(self) -> str:
        s = self._ring.stats()
        return (
            f"<SharedQueue {key_text(self.key)} {s['pending']} pending, "
            f"{s['used_bytes']}/{self.capacity} bytes>"
        )

    def stats(self) -> dict[str, Any]:
        """The ring's counts (capacity, used_bytes, free_bytes, pending,
        pushed, popped, head, tail), the locks, the waiters, the repairs."""
        ctl = self._ctl
        s: dict[str, Any] = self._ring.stats()
        s["push_lock"] = self._lock_state(PUSH)
        s["pop_lock"] = self._lock_state(POP)
        s["repairs"] = {"push": ctl.repairs(PUSH), "pop": ctl.repairs(POP)}
        waiters = ctl.waiters()
        for w in waiters:
            w["alive"] = alive(int(w["pid"]))
        s["waiters"] = waiters
        locks = (self._push_lock, self._pop_lock)
        s["longest_lock_wait_s"] = round(max((lk.max_wait for lk in locks if lk), default=0.0), 6)
        return s

    def _lock_state(self, side: int) -> dict[str, Any]:
        holder = self._ctl.holder(side)
        lock = self._push_lock if side == PUSH else self._pop_lock
        free = lock.free if lock is not None else _semaphore_free(self._lock_key(side))
        if free is None:
            return {"state": "missing (semaphore removed)", "holder": holder}
        if free:
            state = "free" if not holder else f"free; pid {holder} died holding it (repaired next)"
        elif holder:
            state = f"held by pid {holder}" + ("" if alive(holder) else " (not alive)")
        else:
            state = "held (being taken or given back)"
        return {"state": state, "holder": holder}

    def _lock_key(self, side: int) -> int:
        return self.key if side == PUSH else pop_lock_key(self.key)

    # -- a placed kind (the inspector) ------------------------------------------------------
    @classmethod
    def region_size(cls, param: int = 0) -> int:
        return shared_region_size(param)

    @classmethod
    def param_of(cls, size: int) -> int:
        return size - shared_region_size(0)

    def report(self, name: str) -> dict[str, Any]:
        return {"shared_queues": {name: self.stats()}}


def _semaphore_free(key: int) -> bool | None:
    if not lock_exists(key):
        return None
    lock, _ = SemLock.open(key, "lock")
    return lock.free


def refuse_capacity_change(key: int, capacity: int) -> None:
    """Both locks held: a queue made with another capacity holding codes is
    not thrown away because an opener asked for another size."""
    if not SHMFactory.exists(key):
        return
    try:
        shm = SHMFactory.attach(key)
    except (CorruptSegment, SegmentError):
        return  # not recoverable anyway: the factory re-makes it, with a warning
    try:
        found = [p for p in shm.placements() if p.kind == "SharedQueue"]
        if not found or found[0].size == shared_region_size(capacity):
            return
        had = found[0].size - shared_region_size(0)
        try:
            from .sharedqueue import SharedQueue  # the queue imports this module

            pending = len(SharedQueue.place(shm, found[0].name, had, observer=True))
        except (CorruptSegment, ValueError):
            return
    finally:
        shm.detach()
    if pending:
        raise ConfigError(
            f"shared queue {key_text(key)} was made with capacity {had} and holds {pending} "
            f"code(s); open it with capacity={had} to keep them, or remove it "
            f"(SharedQueue.remove({key:#x})) to start afresh with {capacity}",
            option="capacity",
            value=capacity,
        )
    log.info(
        "shared queue %s: capacity %d -> %d, it was empty: re-made", key_text(key), had, capacity
    )


def remove_queue(key: int) -> bool:
    """``SharedQueue.remove``: the segment, both semaphores, the doorbells."""
    removed = SHMFactory.remove(key)
    for lock_key in (key, pop_lock_key(key)):
        removed = remove_lock(lock_key) or removed
    remove_doorbells(key)
    return removed
