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

Poison requests: ``begin`` counts attempts at the same position.  After a
crash the restarted process goes *carefully* until it is past the batch
that was in flight: one code per step, and within a code one request
(frame) per step, each request's replies published before the next one
runs.  So a death or a kill for slowness is counted against the one request
that was running, and a request attempted ``MAX_ATTEMPTS`` times is set
aside (skipped, logged, counted) while its neighbours in the same code are
answered.  The progress inside a code is recorded like a step::

    1. journal.record_part(T, H, k + 1)   T = outbound tail after request k's
                                          replies; next is written last
    2. outbound.push_many(replies)        now T == tail
    3. journal.confirm_part()             done = k + 1

    frames_done(H, tail): if part_head == H and tail == part_tail, the
    replies of request k are out (confirm them); the answer is ``done``

``record_part`` first sets ``next`` back to ``done`` (0 for another code),
so a crash between its stores never confirms more than was published.

Layout (u64 words; only the logic process writes)::

    word  field        meaning
    ----  -----------  -----------------------------------------------------
       0  magic        b"JOURNAL2"
       1  out_tail     T of the last recorded step
       2  in_head      H of the last recorded step
       3  in_count     n of the last recorded step
       4  try_head     inbound head of the step being attempted
       5  try_end      inbound head after it
       6  attempts     attempts at (try_head, try_frame)
       7  set_aside    requests set aside so far
       8  part_head    the code answered request by request (careful mode)
       9  part_tail    outbound tail after the replies of request next - 1
      10  part_next    requests of it whose replies are published, if
                       outbound.tail == part_tail
      11  part_done    requests of it whose replies are known to be out
      12  try_frame    the request (frame index) of the attempt
      13  last_conn    connection of the last request set aside
      14  last_size    its size in bytes
"""

from __future__ import annotations

import enum
from typing import Any

from .codering import CodeRing
from .placed import InSegment, magic_words

MAGIC = int.from_bytes(b"JOURNAL2", "little")
REGION_SIZE = 128
MAX_ATTEMPTS = 3
_MAGIC, _OUT_TAIL, _IN_HEAD, _IN_COUNT, _TRY_HEAD, _TRY_END, _ATTEMPTS, _SET_ASIDE = range(8)
_PART_HEAD, _PART_TAIL, _PART_NEXT, _PART_DONE, _TRY_FRAME, _LAST_CONN, _LAST_SIZE = range(8, 15)


class Pace(enum.Enum):
    """How the next step should go."""

    BATCH = "batch"  # as many codes as are there
    CAREFUL = "careful"  # one request: a batch here crashed the process before
    SET_ASIDE = "set_aside"  # this request crashed the process MAX_ATTEMPTS times


class StepJournal(InSegment):
    KIND = "StepJournal"
    SIZE = REGION_SIZE

    def __init__(self, region: memoryview, *, init: bool) -> None:
        self._w = magic_words(
            region, REGION_SIZE, MAGIC, "step journal", "journal.magic", init=init
        )

    @classmethod
    def on_region(
        cls, region: memoryview, param: int, *, init: bool, observer: bool
    ) -> StepJournal:
        return cls(region, init=init)

    def release(self) -> None:
        self._w.release()

    def report(self, name: str) -> dict[str, Any]:
        w = self._w
        info: dict[str, Any] = {"set_aside": w[_SET_ASIDE]}
        if w[_SET_ASIDE]:
            info["last_set_aside"] = {"conn": w[_LAST_CONN], "size": w[_LAST_SIZE]}
        if w[_ATTEMPTS]:
            info["attempts"] = {"head": w[_TRY_HEAD], "frame": w[_TRY_FRAME], "count": w[_ATTEMPTS]}
        return info

    # -- the step ---------------------------------------------------------------
    def pace(self, head: int, frame: int = 0) -> Pace:
        """Decide how to take request ``frame`` of the code at inbound
        position ``head``."""
        w = self._w
        if w[_ATTEMPTS] == 0 or not w[_TRY_HEAD] <= head < w[_TRY_END]:
            return Pace.BATCH
        if head == w[_TRY_HEAD] and frame == w[_TRY_FRAME] and w[_ATTEMPTS] >= MAX_ATTEMPTS:
            return Pace.SET_ASIDE
        return Pace.CAREFUL

    def begin(self, head: int, end: int, frame: int = 0) -> int:
        """A step from request ``frame`` of the code at ``head`` to inbound
        byte ``end`` starts; returns which attempt at that request this is.
        A careful step inside the batch that crashed keeps that batch's end,
        so the care lasts until past it."""
        w = self._w
        if w[_ATTEMPTS] and head == w[_TRY_HEAD] and frame == w[_TRY_FRAME]:
            w[_ATTEMPTS] += 1
        else:
            inside = w[_ATTEMPTS] and w[_TRY_HEAD] <= head < w[_TRY_END]
            w[_ATTEMPTS] = 0  # invalidate while the bounds change
            w[_TRY_END] = max(end, w[_TRY_END]) if inside else end
            w[_TRY_HEAD] = head
            w[_TRY_FRAME] = frame
            w[_ATTEMPTS] = 1
        return w[_ATTEMPTS]

    # -- a code answered request by request ------------------------------------------
    def frames_done(self, head: int, out_tail: int) -> int:
        """How many requests of the code at ``head`` have their replies out."""
        w = self._w
        if w[_PART_HEAD] != head:
            return 0
        if out_tail == w[_PART_TAIL]:
            w[_PART_DONE] = w[_PART_NEXT]  # published, not yet confirmed: confirm
        return w[_PART_DONE]

    def record_part(self, out_tail: int, head: int, next_frame: int) -> None:
        """Request ``next_frame - 1`` of the code at ``head`` ran; its
        replies take the outbound tail to ``out_tail``.  Before publishing."""
        w = self._w
        for word, value in self.part_writes(out_tail, head, next_frame):
            w[word] = value

    def part_writes(self, out_tail: int, head: int, next_frame: int) -> list[tuple[int, int]]:
        """The stores of ``record_part``, in their order (a list, so a test can
        stop after any of them, as a crash would)."""
        w = self._w
        if w[_PART_HEAD] == head:
            first = [(_PART_NEXT, w[_PART_DONE])]  # the old intent is void first
        else:
            first = [(_PART_DONE, 0), (_PART_NEXT, 0), (_PART_HEAD, head)]
        return [*first, (_PART_TAIL, out_tail), (_PART_NEXT, next_frame)]  # next: last

    def confirm_part(self) -> None:
        """The replies recorded by ``record_part`` are published."""
        self._w[_PART_DONE] = self._w[_PART_NEXT]

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

    def set_aside(self, conn: int, size: int) -> None:
        w = self._w
        w[_LAST_CONN] = conn
        w[_LAST_SIZE] = size
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
