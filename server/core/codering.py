"""Pushing and popping codes on a ring: one at a time, or many per counter update.

``CodeRing`` adds the producer's and the consumer's operations to the region
of ``server.core.ring`` (its byte layout, counters and checks).  Every
operation follows the commit rule stated there: the producer writes the
record bytes, *then* publishes the new tail; the consumer copies the record
out, *then* publishes the new head; each publishing store is one aligned
8-byte store, preceded by the code-count bookkeeping (``pushed_prev``,
``pushed_at``, ``pushed``) that a restarted side repairs.

Batches (``push_many``, ``pop_many``, ``peek_many`` + ``commit_head``) are
where Python gets its speed: the per-record cost is interpreter overhead,
not copying, so one counter update and one copy per batch is the point.
Codes of ``_DIRECT`` bytes or more are copied one by one instead of joined;
``peek_views`` copies none (views of the ring, for a consumer that copies
right away).
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import CodeTooLarge
from .ring import (
    _DIRECT,
    _HEAD,
    _POPPED,
    _POPPED_AT,
    _POPPED_PREV,
    _PUSHED,
    _PUSHED_AT,
    _PUSHED_PREV,
    _SLEEPING,
    _TAIL,
    _TSO,
    RECORD_HEADER,
    RingRegion,
    _pack_len,
    _pack_len_into,
    _unpack_len,
    full_fence,
)


class CodeRing(RingRegion):
    """Push and pop codes in a ring's region (see ``RingRegion``).

    ``init=True`` formats the region; ``init=False`` keeps it and checks it
    (counters in range, and with ``check_records`` every pending record's
    length chaining exactly from head to tail).
    """

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
        end, count = self.stage(codes)
        if count:
            self._publish_tail(end, count)
        return count

    def stage(self, codes: Iterable[bytes]) -> tuple[int, int]:
        """Write codes in order past the tail while they fit, publishing
        nothing: returns (the tail after them, how many).  ``note_pushed``
        and ``store_tail`` then publish them (``push_many`` in three steps,
        for a caller with steps of its own in between: ``SharedQueue``)."""
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
        if parts:
            self._write_parts(pos, parts)
        return tail + size, count

    def write_at(self, pos: int, blob: bytes) -> None:
        """Write raw bytes at stream position ``pos`` (at or past the tail:
        unpublished space), wrapping around the end."""
        self._write(pos, blob)

    def note_pushed(self, new_tail: int, count: int) -> None:
        """The bookkeeping before publishing ``count`` staged codes."""
        w = self._w
        pushed = w[_PUSHED]
        w[_PUSHED_PREV] = pushed
        w[_PUSHED_AT] = new_tail
        w[_PUSHED] = pushed + count

    def store_tail(self, new_tail: int) -> None:
        """The commit: the staged records become visible."""
        if not _TSO:
            full_fence()
        self._w[_TAIL] = new_tail

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
        self, max_codes: int = 1 << 30, max_bytes: int = 1 << 20, start: int | None = None
    ) -> tuple[list[bytes], int]:
        """Like ``pop_many`` but consumes nothing: returns the codes and the
        position after them, for a later ``commit_head``.  (A consumer
        that must finish its work before the codes count as consumed.)
        ``start``: read from this position (a code boundary between the
        head and the tail, the end of an earlier peek) instead of the head."""
        head, tail, used = self._used()
        if start is not None:
            if not head <= start <= tail:
                raise self._corrupt("peek position", start, f"{head}..{tail}")
            used -= start - head
            head = start
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

    def peek_views(
        self, max_codes: int = 1 << 30, max_bytes: int = 1 << 20, start: int | None = None
    ) -> tuple[list[bytes | memoryview], int]:
        """Like ``peek_many``, without the copy: a code that lies in one piece
        comes as a view of the ring (one that wraps around its end, as
        bytes).  A view is valid only until the head passes it, so this is
        for a consumer that copies what it keeps before it commits (the
        connect process appends each reply to a client's output).  Every
        record length is checked as ``peek_many`` checks it."""
        head, tail, used = self._used()
        if start is not None:
            if not head <= start <= tail:
                raise self._corrupt("peek position", start, f"{head}..{tail}")
            head = start
        data, cap, unpack = self._data, self.capacity, _unpack_len
        out: list[bytes | memoryview] = []
        append = out.append
        pos = head
        taken = 0
        while pos < tail and len(out) < max_codes:
            at = pos % cap
            if at + RECORD_HEADER <= cap and tail - pos >= RECORD_HEADER:
                n = unpack(data, at)[0]
                if n > tail - pos - RECORD_HEADER:
                    self._read_len(pos, tail - pos)  # raises with the details
            else:
                n = self._read_len(pos, tail - pos)
            if out and taken + RECORD_HEADER + n > max_bytes:
                break
            body = at + RECORD_HEADER
            if body + n <= cap:
                append(data[body : body + n])
            else:
                append(self._read(pos + RECORD_HEADER, n))
            pos += RECORD_HEADER + n
            taken += RECORD_HEADER + n
        return out, pos

    def commit_head(self, new_head: int, count: int) -> None:
        """Consume ``count`` codes ending at ``new_head`` (from ``peek_many``)."""
        head, tail, used = self._used()
        if not head <= new_head <= tail:
            raise self._corrupt("new head", new_head, f"{head}..{tail}")
        self._publish_head(new_head, count)

    def peek_records(self, start: int, max_bytes: int) -> tuple[bytes, int, int]:
        """The records from ``start`` (a record boundary between the head and
        the tail) as they lie in the ring, each ``u32 length (little-endian)
        | code``: at most ``max_bytes`` of them, but at least one if there is
        one.  Returns (their bytes, how many, the position after them);
        nothing is taken.  (A bus relay sends them on as they are.)"""
        head, tail, _used = self._used()
        if not head <= start <= tail:
            raise self._corrupt("peek position", start, f"{head}..{tail}")
        pos, count = start, 0
        while pos < tail:
            size = RECORD_HEADER + self._read_len(pos, tail - pos)
            if count and pos + size - start > max_bytes:
                break
            pos += size
            count += 1
        return (self._read(start, pos - start) if count else b""), count, pos

    def records_between(self, start: int, end: int) -> int:
        """How many records lie from ``start`` (a record boundary, at or
        after the head) to ``end``; raises unless ``end`` is a boundary
        too, at or before the tail."""
        head, tail, used = self._used()
        if not head <= start <= end <= tail:
            raise self._corrupt("record range", (start, end), f"within {head}..{tail}")
        count = 0
        pos = start
        while pos < end:
            pos += RECORD_HEADER + self._read_len(pos, tail - pos)
            count += 1
        if pos != end:
            raise self._corrupt("record boundary", end, f"the end of a record (next at {pos})")
        return count

    def note_popped(self, new_head: int, count: int) -> None:
        """The bookkeeping before consuming ``count`` codes ending at
        ``new_head`` (from ``peek_many``; checked by the caller)."""
        w = self._w
        popped = w[_POPPED]
        w[_POPPED_PREV] = popped
        w[_POPPED_AT] = new_head
        w[_POPPED] = popped + count

    def store_head(self, new_head: int) -> None:
        """The commit: the space of the consumed codes becomes free."""
        if not _TSO:
            full_fence()
        self._w[_HEAD] = new_head

    def _publish_head(self, new_head: int, count: int) -> None:
        w = self._w
        popped = w[_POPPED]
        w[_POPPED_PREV] = popped
        w[_POPPED_AT] = new_head
        w[_POPPED] = popped + count
        if not _TSO:
            full_fence()
        w[_HEAD] = new_head  # the commit: the space becomes free
