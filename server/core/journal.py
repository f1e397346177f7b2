"""The logic process's step journal: exactly-once processing across crashes.

A step of the logic process takes a batch of inbound codes, runs the app on
them, publishes the replies on the outbound queue and only then consumes the
batch (advances the inbound head).  A crash between publishing the replies
and consuming the batch would make a restarted logic process run the batch
again and send every reply twice.  The journal, placed in the segment, closes
that gap::

    1. codes, H = inbound.peek_many()      nothing consumed yet
    2. journal.begin(head, H)              attempt counting (poison codes)
    3. replies = app(codes)
    4. journal.record(T, H, n)             T = outbound tail after the replies;
                                           T is written before H
    5. outbound.push_many(replies)         publishes the tail: now T == tail
    6. inbound.commit_head(H, n)           the batch is consumed

    recovery: if outbound.tail == T and inbound.head < H:  commit_head(H, n)
              (the replies are out: finish the step)
              otherwise nothing: the batch is still pending and is redone,
              and none of its replies were published

Writing T before H matters: a crash between the two leaves an old H (at or
behind the head), so recovery does nothing and the batch is redone.

Poison codes: ``begin`` counts attempts at the same head.  After a crash the
restarted process goes *carefully* (one code per step) until it is past the
batch that was in flight; a single code that was attempted ``MAX_ATTEMPTS``
times is set aside (consumed without running the app) and counted.

Layout (u64 words; only the logic process writes)::

    word  field       meaning
    ----  ----------  ------------------------------------------------------
       0  magic       b"JOURNAL1"
       1  out_tail    T of the last recorded step
       2  in_head     H of the last recorded step
       3  in_count    n of the last recorded step
       4  try_head    inbound head of the step being attempted
       5  try_end     inbound head after it
       6  attempts    attempts at try_head
       7  set_aside   poison codes set aside so far
"""

from __future__ import annotations

import enum
from typing import Any

from ..errors import CorruptSegment
from .codering import CodeRing
from .placed import InSegment

MAGIC = int.from_bytes(b"JOURNAL1", "little")
REGION_SIZE = 64
MAX_ATTEMPTS = 3
_MAGIC, _OUT_TAIL, _IN_HEAD, _IN_COUNT, _TRY_HEAD, _TRY_END, _ATTEMPTS, _SET_ASIDE = range(8)


class Pace(enum.Enum):
    """How the next step should go."""

    BATCH = "batch"  # as many codes as are there
    CAREFUL = "careful"  # one code: a batch here crashed the process before
    SET_ASIDE = "set_aside"  # this code crashed the process MAX_ATTEMPTS times


class StepJournal(InSegment):
    KIND = "StepJournal"
    SIZE = REGION_SIZE

    def __init__(self, region: memoryview, *, init: bool) -> None:
        if len(region) != REGION_SIZE:
            raise ValueError(f"a journal takes {REGION_SIZE} bytes, got {len(region)}")
        self._w = region.cast("Q")
        if init:
            for i in range(len(self._w)):
                self._w[i] = 0
            self._w[_MAGIC] = MAGIC
        elif self._w[_MAGIC] != MAGIC:
            raise CorruptSegment(
                f"step journal magic is {self._w[_MAGIC]:#x}, expected {MAGIC:#x}: the segment "
                f"is corrupt; remove it (python -m server clean) to start afresh",
                field="journal.magic",
                found=self._w[_MAGIC],
                expected=MAGIC,
            )

    @classmethod
    def on_region(
        cls, region: memoryview, param: int, *, init: bool, observer: bool
    ) -> StepJournal:
        return cls(region, init=init)

    def release(self) -> None:
        self._w.release()

    def report(self, name: str) -> dict[str, Any]:
        return {"set_aside": self.set_aside_count}

    # -- the step ---------------------------------------------------------------
    def pace(self, head: int) -> Pace:
        """Decide how to take the codes at inbound position ``head``."""
        w = self._w
        if w[_ATTEMPTS] == 0 or not w[_TRY_HEAD] <= head < w[_TRY_END]:
            return Pace.BATCH
        if head == w[_TRY_HEAD] and w[_ATTEMPTS] >= MAX_ATTEMPTS:
            return Pace.SET_ASIDE
        return Pace.CAREFUL

    def begin(self, head: int, end: int) -> int:
        """A step over inbound bytes ``head..end`` starts; returns which
        attempt at ``head`` this is.  A careful step inside the batch that
        crashed keeps that batch's end, so the care lasts until past it."""
        w = self._w
        if w[_ATTEMPTS] and head == w[_TRY_HEAD]:
            w[_ATTEMPTS] += 1
        else:
            inside = w[_ATTEMPTS] and w[_TRY_HEAD] < head < w[_TRY_END]
            w[_ATTEMPTS] = 0  # invalidate while the bounds change
            w[_TRY_END] = max(end, w[_TRY_END]) if inside else end
            w[_TRY_HEAD] = head
            w[_ATTEMPTS] = 1
        return w[_ATTEMPTS]

    def record(self, out_tail: int, in_head: int, in_count: int) -> None:
        """The replies will take the outbound tail to ``out_tail``; the batch
        ends at ``in_head``.  Called after the app ran, before publishing."""
        w = self._w
        w[_OUT_TAIL] = out_tail  # first: see the module docstring
        w[_IN_COUNT] = in_count
        w[_IN_HEAD] = in_head

    def succeeded(self, head_after: int) -> None:
        """The step is consumed; attempts at later heads start afresh unless
        they are still inside a batch that once crashed."""
        w = self._w
        if w[_ATTEMPTS] and head_after >= w[_TRY_END]:
            w[_ATTEMPTS] = 0

    def set_aside(self) -> None:
        w = self._w
        w[_SET_ASIDE] += 1

    # -- recovery -------------------------------------------------------------------
    def recover(self, inbound: CodeRing, outbound: CodeRing) -> int:
        """Finish a step whose replies were published but whose batch was
        not consumed.  Returns the number of codes it consumed (0: nothing
        to finish)."""
        w = self._w
        head, tail = inbound.head, inbound.tail
        if outbound.tail == w[_OUT_TAIL] and head < w[_IN_HEAD] <= tail:
            count = w[_IN_COUNT]
            inbound.commit_head(w[_IN_HEAD], count)
            self.succeeded(w[_IN_HEAD])
            return int(count)
        return 0

    @property
    def set_aside_count(self) -> int:
        return self._w[_SET_ASIDE]

    @property
    def attempts(self) -> int:
        return self._w[_ATTEMPTS]
