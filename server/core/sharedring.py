"""The control block of a queue that many unrelated processes share (pure).

A ``SharedQueue`` (``server.ipc.sharedqueue``) is a ``CodeRing`` (see
``server.core.ring``: the records, the byte counters, the commit rule)
behind two locks, one for the producing side and one for the consuming
side, so any number of processes may push and any number may pop, and a
push and a pop still run at the same time, as in the single-producer ring.
The locks are System V semaphores taken with ``SEM_UNDO``: the kernel gives
a lock back when its holder dies, even by ``SIGKILL``.  What the kernel does
not know is what the dead holder left half done; this block lets the next
holder find out and repair it.  Region layout (u64 words)::

    word  offset  field           written by
    ----  ------  --------------  ---------------------------------------------
       0       0  magic           INIT (b"SHAREDQ\\2")
       1       8  capacity        INIT (the ring's)
       2      16  slots           INIT (waiter slots: WAITER_SLOTS)
       3      24  pop_lock_key    INIT (the key of the consuming side's semaphore)
       8      64  push_holder     push-lock holder: its pid while it holds it
       9      72  push_repairs    push-lock holder: dead holders repaired
      16     128  pop_holder      pop-lock holder: its pid while it holds it
      17     136  pop_repairs     pop-lock holder: dead holders repaired
      24     192  readers_asleep  pop-lock holder: bit i set while slot i waits
                                  for codes
      25     200  writers_asleep  push-lock holder: bit i set while slot i waits
                                  for room
      10      80  mark_pending    push-lock holder: 1 + mark slot of a marked
                                  push being published (0: none)
      11      88  mark_seq        ... the mark it will record
      12      96  mark_tail       ... the tail once it is published
      32     256  slot i: pid     both locks held: the process that owns slot i
      33     264  slot i: seq     slot i's owner: +1 each time it falls asleep
                                  (16 bytes per slot, WAITER_SLOTS slots)
     160    1280  mark j          push-lock holder: the last mark recorded in
                                  mark slot j (MARK_SLOTS u64 words)
     192    1536  the ring        ``server.core.ring`` (its own 256-byte control)

The lock rule.  A holder stores its pid in ``*_holder`` right after the
semaphore is its own and stores 0 right before it gives it back; so a
holder that finds a non-zero pid there took over from one that died inside
(``begin`` says so).  It then repairs that side's counters (the ring's
``recover_producer`` or ``recover_consumer``: a batch the dead one counted
but never published is uncounted) and wakes every sleeper of the other side
(the dead one may have published without waking anyone).  Record bytes a
dead writer left past the tail were never published: they are overwritten.

The sleep rule (Dekker's, with the fences of ``server.core.ring``)::

    sleeping reader, pop lock held          writer, push lock held
    ------------------------------          ----------------------
    seq += 1, full fence                    publish the tail
    set my bit in readers_asleep            full fence
    full fence                              read readers_asleep: ring every
    tail still == head? release, sleep      set bit not yet rung for its seq
    otherwise clear my bit, pop

Either the writer sees the bit, or the reader sees the tail: no wake-up is
lost, and no grace period is needed.  The seq goes up *before* the bit is
set: a waker that saw the bit with the seq of the sleep before, which it
rang already, would skip this one (the writer reads the bit between the
sleeper's two stores), and the sleeper would wait for a safety wake-up.  Waiting for room is the same with
``writers_asleep``, the push lock, and the head.  A sleeper clears its bit
under its lock when it wakes.  One killed asleep leaves its bit set (the
trap of a flag left by a dead process): waking it finds nobody listening,
and the bit is cleared (``clear_dead``) by whoever holds that side's lock
next, or when its slot is claimed again.

Marks: a writer that must know, after a crash, whether its push happened
(a bus relay: "applied up to sequence S from host H") pushes *with a mark*:
(mark slot j, S).  Under the push lock, after counting and before
publishing, it writes the pending mark (j, S, the tail after the push);
after publishing it records S in mark j and clears the pending mark.  The
next push-lock holder after a death settles a pending mark: recorded if the
tail is where it says (the push was published), dropped if not.  So the
mark and the push are one step: the push happened exactly when its mark
says so.

Slots are claimed with both locks held (push first, then pop: the only
order in which both are ever waited for): a slot whose pid is 0 or no
longer alive is free; claiming it clears both its bits.  Every value read
from the block is checked (``CorruptQueue``): holder pids, slot pids and the
configuration words.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from ..errors import CorruptQueue
from .ring import full_fence, region_size

MAGIC = int.from_bytes(b"SHAREDQ\2", "little")
WAITER_SLOTS = 64  # one bit each in a u64 mask
SLOT_WORDS = 2
MARK_SLOTS = 32
CONTROL_SIZE = 256 + 8 * SLOT_WORDS * WAITER_SLOTS + 8 * MARK_SLOTS  # 1536
PID_MAX = 1 << 22  # Linux's limit (kernel.pid_max cannot exceed it)

_MAGIC, _CAPACITY, _SLOTS, _POP_KEY = 0, 1, 2, 3
PUSH, POP = 8, 16  # a side is the word index of its holder; repairs follow it
_READERS, _WRITERS = 24, 25
_SLOT0 = 32
_PENDING, _MARK_SEQ, _MARK_TAIL = 10, 11, 12
_MARK0 = _SLOT0 + SLOT_WORDS * WAITER_SLOTS  # 160


def shared_region_size(capacity: int) -> int:
    """Bytes a shared queue of ``capacity`` data bytes takes."""
    return CONTROL_SIZE + region_size(capacity)


class QueueControl:
    """The control block (the first ``CONTROL_SIZE`` bytes of the region)."""

    def __init__(self, region: memoryview, capacity: int, pop_lock_key: int, *, init: bool) -> None:
        if len(region) != CONTROL_SIZE:
            raise ValueError(f"the control block takes {CONTROL_SIZE} bytes, got {len(region)}")
        self._w = w = region.cast("Q")
        self.capacity = capacity
        if init:
            for i in range(len(w)):
                w[i] = 0
            w[_CAPACITY] = capacity
            w[_SLOTS] = WAITER_SLOTS
            w[_POP_KEY] = pop_lock_key
            w[_MAGIC] = MAGIC  # last: a torn format is recognisably not a queue
            return
        for index, field, expected in (
            (_MAGIC, "magic", MAGIC),
            (_CAPACITY, "capacity", capacity),
            (_SLOTS, "waiter slots", WAITER_SLOTS),
            (_POP_KEY, "pop lock key", pop_lock_key),
        ):
            if w[index] != expected:
                raise corrupt(field, w[index], expected)
        for side in (PUSH, POP):
            self.holder(side)  # raises if out of range
        for slot in range(WAITER_SLOTS):
            self.slot_pid(slot)
        if w[_PENDING] > MARK_SLOTS:
            raise corrupt("pending mark slot", w[_PENDING] - 1, f"below {MARK_SLOTS}")

    def release(self) -> None:
        self._w.release()

    # -- the lock rule ----------------------------------------------------------------
    def holder(self, side: int) -> int:
        """The pid recorded by the side's lock holder (0: none)."""
        pid = self._w[side]
        if pid >= PID_MAX:
            raise corrupt(f"{_side_name(side)} lock holder", pid, f"a pid below {PID_MAX}")
        return pid

    def begin(self, side: int, pid: int) -> int:
        """Just took ``side``'s lock: record ``pid``; returns the pid of a
        holder that died holding it (0 if the last one gave it back).  The
        caller then repairs: see the module docstring."""
        w = self._w
        dead = w[side]
        if dead:
            if dead >= PID_MAX:
                dead = PID_MAX - 1  # a corrupt word: repair as for a dead holder
            w[side + 1] += 1
        w[side] = pid
        return dead

    def end(self, side: int) -> None:
        """About to give ``side``'s lock back."""
        self._w[side] = 0

    def repairs(self, side: int) -> int:
        return self._w[side + 1]

    # -- the sleep rule -----------------------------------------------------------------
    def fall_asleep(self, side: int, slot: int) -> None:
        """``side``'s lock held: slot ``slot`` waits (POP: for codes; PUSH:
        for room).  The caller then fences and looks at the ring again."""
        w = self._w
        mask = _READERS if side == POP else _WRITERS
        seq = _SLOT0 + SLOT_WORDS * slot + 1
        # The new seq before the bit: a waker that sees the bit must see the
        # seq of this sleep, or it takes it for one it rang and skips it.
        w[seq] += 1
        full_fence()
        w[mask] |= 1 << slot
        full_fence()

    def wake_up(self, side: int, slot: int) -> None:
        """``side``'s lock held: slot ``slot`` no longer waits."""
        w = self._w
        mask = _READERS if side == POP else _WRITERS
        bit = 1 << slot
        if w[mask] & bit:
            w[mask] &= ~bit

    def sleepers(self, side: int) -> int:
        """The mask of slots waiting on ``side`` (POP: for codes)."""
        return self._w[_READERS if side == POP else _WRITERS]

    def to_ring(self, mask: int, rung: dict[int, int]) -> Iterator[int]:
        """The slots of ``mask`` not rung yet for their current sleep;
        ``rung`` (the waker's own: slot -> seq) is updated."""
        w = self._w
        full_fence()  # the mask was read before the seqs (see fall_asleep)
        slot = 0
        while mask:
            if mask & 1:
                seq = w[_SLOT0 + SLOT_WORDS * slot + 1]
                if rung.get(slot) != seq:
                    rung[slot] = seq
                    yield slot
            mask >>= 1
            slot += 1

    def clear_dead(self, side: int, slot: int, alive: Callable[[int], bool]) -> bool:
        """``side``'s lock held: clear slot ``slot``'s bit if its owner is
        gone (a sleeper that was killed); True if cleared."""
        if alive(self.slot_pid(slot)):
            return False
        self.wake_up(side, slot)
        return True

    # -- marks ----------------------------------------------------------------------------
    def mark_pending(self, slot: int, seq: int, tail: int) -> None:
        """Push lock held, the push counted, not published: its mark."""
        _check_mark_slot(slot)
        w = self._w
        w[_MARK_SEQ] = seq
        w[_MARK_TAIL] = tail
        w[_PENDING] = slot + 1

    def mark_published(self) -> None:
        """Push lock held, the marked push published: record its mark."""
        w = self._w
        slot = w[_PENDING] - 1
        w[_MARK0 + slot] = w[_MARK_SEQ]
        w[_PENDING] = 0

    def settle_mark(self, tail: int) -> bool | None:
        """Push lock held, after a death inside it: record the pending mark
        if its push was published (the tail is where it says), drop it if
        not.  None: none pending; True: recorded; False: dropped."""
        w = self._w
        pending = w[_PENDING]
        if not pending:
            return None
        if pending > MARK_SLOTS:
            raise corrupt("pending mark slot", pending - 1, f"below {MARK_SLOTS}")
        published = w[_MARK_TAIL] == tail
        if published:
            w[_MARK0 + pending - 1] = w[_MARK_SEQ]
        w[_PENDING] = 0
        return published

    def mark(self, slot: int) -> int:
        """The last mark recorded in ``slot`` (0: none yet)."""
        _check_mark_slot(slot)
        return self._w[_MARK0 + slot]

    # -- slots ----------------------------------------------------------------------------
    def slot_pid(self, slot: int) -> int:
        pid = self._w[_SLOT0 + SLOT_WORDS * slot]
        if pid >= PID_MAX:
            raise corrupt(f"waiter slot {slot} pid", pid, f"a pid below {PID_MAX}")
        return pid

    def claim_slot(self, pid: int, alive: Callable[[int], bool]) -> int | None:
        """Both locks held: take a free slot (pid 0, or its owner gone) for
        ``pid``; None if every slot belongs to a live process."""
        w = self._w
        for slot in range(WAITER_SLOTS):
            owner = self.slot_pid(slot)
            if owner == 0 or not alive(owner):
                w[_SLOT0 + SLOT_WORDS * slot] = pid
                self.wake_up(PUSH, slot)
                self.wake_up(POP, slot)
                return slot
        return None

    def leave_slot(self, slot: int, pid: int) -> None:
        """Give a slot back (its owner closing; its bits are clear)."""
        index = _SLOT0 + SLOT_WORDS * slot
        if self._w[index] == pid:
            self._w[index] = 0

    def waiters(self) -> list[dict[str, int | str]]:
        """The slots in use, for the inspector: pid and what it waits for."""
        out: list[dict[str, int | str]] = []
        readers, writers = self._w[_READERS], self._w[_WRITERS]
        for slot in range(WAITER_SLOTS):
            pid = self._w[_SLOT0 + SLOT_WORDS * slot]
            if pid:
                bit = 1 << slot
                waits = "codes" if readers & bit else "room" if writers & bit else "-"
                out.append({"slot": slot, "pid": pid, "waits_for": waits})
        return out


def _check_mark_slot(slot: int) -> None:
    if not 0 <= slot < MARK_SLOTS:
        raise ValueError(f"mark slot {slot}: there are {MARK_SLOTS} (0..{MARK_SLOTS - 1})")


def _side_name(side: int) -> str:
    return "push" if side == PUSH else "pop"


def corrupt(field: str, found: object, expected: object) -> CorruptQueue:
    return CorruptQueue(
        f"shared queue field {field!r} is {found!r}, expected {expected!r}: the segment is "
        f"corrupt; remove it (SharedQueue.remove(key), or python -m server clean --key K) "
        f"to start afresh",
        field=field,
        found=found,
        expected=expected,
    )
