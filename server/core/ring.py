"""A ring of variable-length codes in one region of memory (pure core).

One producer and one consumer share the region, in the same process or in
two; no lock is taken.  The ring is a circular byte stream: a record is a
4-byte little-endian length followed by the payload, and either part may wrap
around the end of the data area.  Full and empty are told apart by two
monotonically increasing byte counters, never by a wasted slot::

    used = tail - head          0 <= used <= capacity
    free = capacity - used      a record of n bytes needs n + 4 of them

Region layout (u64 words, little-endian; each counter is written by exactly
one side, always with a single aligned 8-byte store through a ``"Q"``
memoryview, never ``struct.pack_into``, which clears the bytes before
writing them and lets the other side read a torn 0)::

    offset  field        written by
    ------  -----------  -------------------------------------------------
         0  magic        INIT  (b"CODEQ\\0\\0\\1")
         8  capacity     INIT
        64  tail         producer: bytes published (monotonic)
        72  pushed       producer: codes published
        80  pushed_prev  producer: ``pushed`` before the batch in flight
        88  pushed_at    producer: the ``tail`` that ``pushed`` belongs to
       128  head         consumer: bytes consumed (monotonic)
       136  popped       consumer: codes consumed
       144  popped_prev  consumer: ``popped`` before the batch in flight
       152  popped_at    consumer: the ``head`` that ``popped`` belongs to
       192  sleep_seq    consumer: odd while it waits on its doorbell (+1 at
                         each fall asleep and each wake-up)
       256  data         ``capacity`` bytes of records

The commit rule: the producer writes the record bytes, *then* publishes the
new tail; the consumer copies the record out, *then* publishes the new head.
A crash before the publishing store leaves the old counter, so a half-written
record is never visible and a half-read one is read again.

The code counters are statistics, but exact ones: a batch stores
``pushed_prev``, then ``pushed_at`` (the new tail), then ``pushed``, then the
tail.  If ``pushed_at`` differs from ``tail`` after a crash, the batch was not
published and ``recover_producer`` puts ``pushed`` back to ``pushed_prev``
(likewise for the consumer).  Each side repairs only its own fields, so it is
safe while the other side keeps running.

On x86-64 stores are seen by other cores in program order (TSO), so the
commit rule needs no fence; elsewhere a full fence is issued before each
publishing store.
"""

from __future__ import annotations

import platform
import struct
import threading
from collections.abc import Callable

from ..errors import CorruptQueue

MAGIC = int.from_bytes(b"CODEQ\0\0\1", "little")
CONTROL_SIZE = 256
RECORD_HEADER = 4
MAX_CODE = (1 << 32) - 1
_DIRECT = 2048  # codes at least this large are copied one by one, never joined

# u64 word indexes of the fields above
_MAGIC, _CAPACITY = 0, 1
_TAIL, _PUSHED, _PUSHED_PREV, _PUSHED_AT = 8, 9, 10, 11
_HEAD, _POPPED, _POPPED_PREV, _POPPED_AT = 16, 17, 18, 19
_SLEEPING = 24

_LEN = struct.Struct("<I")
_pack_len = _LEN.pack
_unpack_len = _LEN.unpack_from
_pack_len_into = _LEN.pack_into  # only ever on unpublished record bytes

_TSO = platform.machine().lower() in {"x86_64", "amd64", "i386", "i686", "x86"}
_fence_lock = threading.Lock()


def full_fence() -> None:
    """A full memory barrier: an uncontended lock round trip is a locked
    read-modify-write in the C library (``lock cmpxchg`` on x86)."""
    _fence_lock.acquire()
    _fence_lock.release()


def region_size(capacity: int) -> int:
    """Bytes a ring of ``capacity`` data bytes takes in a segment."""
    return CONTROL_SIZE + capacity


class RingRegion:
    """The region of a ring (a writable memoryview of ``region_size(capacity)``
    bytes): its counters, checks and repairs, and the circular byte stream.
    ``server.core.codering.CodeRing`` adds pushing and popping.

    ``init=True`` formats the region; ``init=False`` keeps it and checks it
    (counters in range, and with ``check_records`` every pending record's
    length chaining exactly from head to tail).
    """

    def __init__(
        self, region: memoryview, capacity: int, *, init: bool, check_records: bool = True
    ) -> None:
        if capacity < RECORD_HEADER + 1:
            raise ValueError(
                f"capacity must be at least {RECORD_HEADER + 1} bytes, got {capacity!r}"
            )
        if len(region) != region_size(capacity):
            raise ValueError(
                f"a ring of capacity {capacity} needs a region of {region_size(capacity)} bytes, "
                f"got {len(region)}"
            )
        self.capacity = capacity
        self.max_code = min(capacity - RECORD_HEADER, MAX_CODE)
        self._w = region[:CONTROL_SIZE].cast("Q")
        self._data = region[CONTROL_SIZE:]
        # Called (by the producer) when a push finds the consumer asleep; at
        # most once per sleep.  The ring itself makes no system calls.
        self.waker: Callable[[], object] | None = None
        self._rung = 0
        if init:
            self._format()
        else:
            self._check(check_records)

    def release(self) -> None:
        """Drop the views; any later use raises ValueError."""
        self._w.release()
        self._data.release()

    # -- set-up -----------------------------------------------------------------
    def _format(self) -> None:
        w = self._w
        for i in range(len(w)):
            w[i] = 0
        w[_CAPACITY] = self.capacity
        w[_MAGIC] = MAGIC  # last: a torn format is recognisably not a ring

    def _check(self, check_records: bool) -> None:
        w = self._w
        if w[_MAGIC] != MAGIC:
            raise self._corrupt("magic", w[_MAGIC], MAGIC)
        if w[_CAPACITY] != self.capacity:
            raise self._corrupt("capacity", w[_CAPACITY], self.capacity)
        head, tail = w[_HEAD], w[_TAIL]
        if not 0 <= tail - head <= self.capacity:
            raise self._corrupt("tail - head", tail - head, f"0..{self.capacity}")
        if check_records:
            pos, count = head, 0
            while pos < tail:
                n = self._read_len(pos, tail - pos)
                pos += RECORD_HEADER + n
                count += 1
            # pos == tail here: _read_len refuses a record running past tail

    def _corrupt(self, field: str, found: object, expected: object) -> CorruptQueue:
        return CorruptQueue(
            f"code queue field {field!r} is {found!r}, expected {expected!r}: the segment is "
            f"corrupt; remove it (python -m server clean) to start afresh",
            field=field,
            found=found,
            expected=expected,
        )

    def recover_producer(self) -> None:
        """Called by a (re)starting producer: undo the code count of a batch
        that a crash left unpublished."""
        w = self._w
        if w[_PUSHED_AT] != w[_TAIL]:
            w[_PUSHED] = w[_PUSHED_PREV]
            w[_PUSHED_AT] = w[_TAIL]

    def recover_consumer(self) -> None:
        """Called by a (re)starting consumer: undo the code count of a pop
        that a crash left unpublished, and clear a stale sleeping flag."""
        w = self._w
        if w[_POPPED_AT] != w[_HEAD]:
            w[_POPPED] = w[_POPPED_PREV]
            w[_POPPED_AT] = w[_HEAD]
        if w[_SLEEPING] & 1:
            w[_SLEEPING] += 1

    # -- byte stream ----------------------------------------------------------------
    def _read(self, pos: int, n: int) -> bytes:
        cap = self.capacity
        start = pos % cap
        end = start + n
        if end <= cap:
            return self._data[start:end].tobytes()
        return self._data[start:].tobytes() + self._data[: end - cap].tobytes()

    def _write(self, pos: int, blob: bytes | memoryview) -> None:
        cap = self.capacity
        start = pos % cap
        end = start + len(blob)
        if end <= cap:
            self._data[start:end] = blob
        else:
            cut = cap - start
            self._data[start:] = blob[:cut]
            self._data[: end - cap] = blob[cut:]

    def _read_len(self, pos: int, available: int) -> int:
        """Length of the record at stream position ``pos``; it must fit in
        the ``available`` published bytes."""
        if available < RECORD_HEADER:
            raise self._corrupt("record header", available, f">= {RECORD_HEADER} bytes")
        start = pos % self.capacity
        if start + RECORD_HEADER <= self.capacity:
            n: int = _unpack_len(self._data, start)[0]
        else:
            n = _unpack_len(self._read(pos, RECORD_HEADER))[0]
        if n > available - RECORD_HEADER:
            raise self._corrupt(f"record length at {pos}", n, f"<= {available - RECORD_HEADER}")
        return n

    def _used(self) -> tuple[int, int, int]:
        w = self._w
        head, tail = w[_HEAD], w[_TAIL]
        used = tail - head
        if not 0 <= used <= self.capacity:
            raise self._corrupt("tail - head", used, f"0..{self.capacity}")
        return head, tail, used

    def room(self) -> int:
        """Free bytes now (a code of n bytes needs n + 4)."""
        return self.capacity - self._used()[2]

    @property
    def head(self) -> int:
        return self._w[_HEAD]

    @property
    def tail(self) -> int:
        return self._w[_TAIL]

    # -- doorbell support -------------------------------------------------------------------
    def empty(self) -> bool:
        w = self._w
        return w[_TAIL] == w[_HEAD]

    @property
    def sleeping(self) -> bool:
        return bool(self._w[_SLEEPING] & 1)

    def set_sleeping(self, value: bool) -> None:
        w = self._w
        if bool(w[_SLEEPING] & 1) != value:
            w[_SLEEPING] += 1

    # -- facts ------------------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        w = self._w
        head, tail = w[_HEAD], w[_TAIL]
        used = max(0, min(tail - head, self.capacity))
        pushed, popped = w[_PUSHED], w[_POPPED]
        return {
            "capacity": self.capacity,
            "used_bytes": used,
            "free_bytes": self.capacity - used,
            "pending": max(0, pushed - popped),
            "pushed": pushed,
            "popped": popped,
            "head": head,
            "tail": tail,
        }

    def __len__(self) -> int:
        """Codes pending (from the code counters)."""
        w = self._w
        return max(0, w[_PUSHED] - w[_POPPED])
