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
from collections.abc import Callable, Iterable

from ..errors import CodeTooLarge, CorruptQueue

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


class CodeRing:
    """Push and pop codes in ``region`` (a writable memoryview of
    ``region_size(capacity)`` bytes).

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

    # -- producer ----------------------------------------------------------------------
    def push(self, code: bytes) -> bool:
        """Append one code; False if it does not fit now."""
        # The hot path, written out flat: in CPython every attribute lookup
        # costs about as much as a store into the segment.
        w = self._w
        cap = self.capacity
        tail = w[_TAIL]
        used = tail - w[_HEAD]
        n = len(code)
        need = n + RECORD_HEADER
        if need > cap - used or used < 0:
            self._used()  # raises if the counters are corrupt
            if n > self.max_code:
                raise self._too_large(n)
            return False
        start = tail % cap
        if start + need <= cap:
            _pack_len_into(self._data, start, n)
            self._data[start + RECORD_HEADER : start + need] = code
        else:
            self._write(tail, _pack_len(n) + bytes(code))
        new_tail = tail + need
        pushed = w[_PUSHED]
        w[_PUSHED_PREV] = pushed
        w[_PUSHED_AT] = new_tail
        w[_PUSHED] = pushed + 1
        if not _TSO:
            full_fence()
        w[_TAIL] = new_tail  # the commit: the record becomes visible
        seq = w[_SLEEPING]  # odd while the consumer sleeps
        if seq & 1 and seq != self._rung:
            self._wake(seq)
        return True

    def push_many(self, codes: Iterable[bytes]) -> int:
        """Append codes in order while they fit; one tail update for all.
        Returns how many were appended (the rest did not fit now)."""
        head, tail, used = self._used()
        room = self.capacity - used
        parts: list[bytes] = []
        count = 0
        size = 0
        pos = tail
        for code in codes:
            n = len(code)
            if n > self.max_code:
                if count:
                    break  # publish what we have; the caller meets the error next time
                raise self._too_large(n)
            if size + n + RECORD_HEADER > room:
                break
            if n < _DIRECT:  # small: gather, copy once
                parts.append(_pack_len(n))
                parts.append(code)
            else:  # large: copy straight into the ring, no join
                if parts:
                    pos = self._write_parts(pos, parts)
                self._write(pos, _pack_len(n))
                self._write(pos + RECORD_HEADER, code)
                pos += RECORD_HEADER + n
            size += n + RECORD_HEADER
            count += 1
        if count:
            if parts:
                self._write_parts(pos, parts)
            self._publish_tail(tail + size, count)
        return count

    def _write_parts(self, pos: int, parts: list[bytes]) -> int:
        blob = b"".join(parts)
        parts.clear()
        self._write(pos, blob)
        return pos + len(blob)

    def _publish_tail(self, new_tail: int, count: int) -> None:
        w = self._w
        pushed = w[_PUSHED]
        w[_PUSHED_PREV] = pushed
        w[_PUSHED_AT] = new_tail
        w[_PUSHED] = pushed + count
        if not _TSO:
            full_fence()
        w[_TAIL] = new_tail  # the commit: the records become visible
        seq = w[_SLEEPING]
        if seq & 1 and seq != self._rung:
            self._wake(seq)

    def _wake(self, seq: int) -> None:
        """The consumer sleeps and nobody woke it for this sleep yet."""
        self._rung = seq
        if self.waker is not None:
            self.waker()

    def _too_large(self, n: int) -> CodeTooLarge:
        return CodeTooLarge(
            f"a code of {n} bytes can never fit in a queue of {self.capacity} bytes "
            f"(at most {self.max_code}); make the queue larger or the code smaller",
            size=n,
            limit=self.max_code,
        )

    # -- consumer ----------------------------------------------------------------------
    def peek(self) -> bytes | None:
        """The oldest code without consuming it; None if empty."""
        head, tail, used = self._used()
        if not used:
            return None
        n = self._read_len(head, used)
        return self._read(head + RECORD_HEADER, n)

    def pop(self) -> bytes | None:
        """Remove and return the oldest code; None if empty."""
        # Flat, like push.
        w = self._w
        cap = self.capacity
        head = w[_HEAD]
        used = w[_TAIL] - head
        if used <= 0 or used > cap:
            if used:
                self._used()  # raises: the counters are corrupt
            return None
        start = head % cap
        if start + RECORD_HEADER <= cap:
            n: int = _unpack_len(self._data, start)[0]
            if n > used - RECORD_HEADER:
                self._read_len(head, used)  # raises with the details
            body = start + RECORD_HEADER
            if body + n <= cap:
                code = self._data[body : body + n].tobytes()
            else:
                code = self._read(head + RECORD_HEADER, n)
        else:
            n = self._read_len(head, used)
            code = self._read(head + RECORD_HEADER, n)
        new_head = head + RECORD_HEADER + n
        popped = w[_POPPED]
        w[_POPPED_PREV] = popped
        w[_POPPED_AT] = new_head
        w[_POPPED] = popped + 1
        if not _TSO:
            full_fence()
        w[_HEAD] = new_head  # the commit: the space becomes free
        return code

    def pop_many(self, max_codes: int = 1 << 30, max_bytes: int = 1 << 20) -> list[bytes]:
        """Remove up to ``max_codes`` codes, about ``max_bytes`` of records
        (always at least one code if any is there), with one head update.
        The pending bytes are copied out once and parsed in one pass."""
        out, new_head = self.peek_many(max_codes, max_bytes)
        if out:
            self._publish_head(new_head, len(out))
        return out

    def peek_many(
        self, max_codes: int = 1 << 30, max_bytes: int = 1 << 20
    ) -> tuple[list[bytes], int]:
        """Like ``pop_many`` but consumes nothing: returns the codes and the
        head position after them, for a later ``commit_head``.  (A consumer
        that must finish its work before the codes count as consumed.)"""
        head, tail, used = self._used()
        if not used or max_codes <= 0:
            return [], head
        first = self._read_len(head, used)
        if first >= _DIRECT:
            return self._peek_large(head, used, max_codes, max_bytes)
        window = min(used, max(max_bytes, RECORD_HEADER))
        if first + RECORD_HEADER > window:
            window = first + RECORD_HEADER
        buf = self._read(head, window)
        out: list[bytes] = []
        append = out.append
        unpack = _unpack_len
        last = window - RECORD_HEADER
        i = 0
        while i <= last:
            n = unpack(buf, i)[0]
            j = i + RECORD_HEADER + n
            if j > window:
                if j > used:  # the length points past what was published
                    self._read_len(head + i, used - i)  # raises with the details
                break
            append(buf[i + RECORD_HEADER : j])
            i = j
            if len(out) >= max_codes:
                break
        return out, head + i

    def _peek_large(
        self, head: int, used: int, max_codes: int, max_bytes: int
    ) -> tuple[list[bytes], int]:
        """peek_many for large records: copy each payload once, straight out
        of the ring, instead of copying the window and then slicing it."""
        out: list[bytes] = []
        pos = head
        end = head + used
        taken = 0
        while pos < end and len(out) < max_codes:
            n = self._read_len(pos, end - pos)
            if out and taken + RECORD_HEADER + n > max_bytes:
                break
            out.append(self._read(pos + RECORD_HEADER, n))
            pos += RECORD_HEADER + n
            taken += RECORD_HEADER + n
        return out, pos

    def commit_head(self, new_head: int, count: int) -> None:
        """Consume ``count`` codes ending at ``new_head`` (from ``peek_many``)."""
        head, tail, used = self._used()
        if not head <= new_head <= tail:
            raise self._corrupt("new head", new_head, f"{head}..{tail}")
        self._publish_head(new_head, count)

    def room(self) -> int:
        """Free bytes now (a code of n bytes needs n + 4)."""
        return self.capacity - self._used()[2]

    @property
    def head(self) -> int:
        return self._w[_HEAD]

    @property
    def tail(self) -> int:
        return self._w[_TAIL]

    def _publish_head(self, new_head: int, count: int) -> None:
        w = self._w
        popped = w[_POPPED]
        w[_POPPED_PREV] = popped
        w[_POPPED_AT] = new_head
        w[_POPPED] = popped + count
        if not _TSO:
            full_fence()
        w[_HEAD] = new_head  # the commit: the space becomes free

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
