"""The logic process's step: inbound codes -> the app -> outbound codes, exactly once.

``LogicStepper`` is the pure core: it works on two ``CodeRing``s and a
``StepJournal`` (plain bytearrays in the tests, the segment in the server).
One ``step()``::

    head = inbound.head
    pace = journal.pace(head)        BATCH, CAREFUL (1 code) or SET_ASIDE
    codes, end = inbound.peek_many() nothing consumed yet
    journal.begin(head, end)
    run the app on the codes, in order, into an Outbox; stop early once the
    replies take a quarter of the outbound queue
    -- the replies are now held until the outbound queue has room for all
    journal.record(T, H, n)          T: outbound tail after the replies
    outbound.push_many(replies)      one tail store publishes them all
    inbound.commit_head(H, n)        the codes are consumed
    journal.succeeded(H)

A crash before ``push_many`` publishes leaves the codes pending: the next
logic process runs them again, and none of their replies was published.  A
crash after it is finished by ``journal.recover`` (the replies are out, so
the codes are consumed without running them again).  The app's replies to
one step are capped at the outbound queue's capacity, so they always fit
in one go.

The process shell (``server.proc.logic``) only loops ``step()`` and sleeps
on the inbound doorbell when there is nothing to do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .app import Dispatcher, Outbox
from .codering import CodeRing
from .framing import Framing, LengthFraming
from .journal import Pace, StepJournal
from .ring import RECORD_HEADER

log = logging.getLogger("server.logic")

BATCH_CODES = 512
BATCH_BYTES = 256 * 1024


class LogicStepper:
    """Runs steps; returns from ``step()`` how many codes it consumed,
    0 when none is pending, BLOCKED when replies wait for outbound room."""

    BLOCKED = -1

    def __init__(
        self,
        inbound: CodeRing,
        outbound: CodeRing,
        journal: StepJournal,
        app: Any,
        framing: Framing | None = None,
        after_publish: Callable[[int], None] | None = None,
    ) -> None:
        self.inbound = inbound
        self.outbound = outbound
        self.journal = journal
        framing = framing or LengthFraming()
        self.outbox = Outbox(limit=outbound.capacity, encode_frame=framing.encode)
        self.dispatcher = Dispatcher(app, self.outbox)
        self.soft_limit = outbound.capacity // 4
        self.held: tuple[list[bytes], int, int, int] | None = None  # codes, size, H, n
        self.set_aside = 0
        # Called with the step number between publishing a step's replies
        # and consuming its codes: the process shell's fault injection.
        self.after_publish = after_publish
        self.steps = 0

    def recover(self) -> int:
        """Finish a step a crashed process published but did not consume."""
        return self.journal.recover(self.inbound, self.outbound)

    def step(self) -> int:
        if self.held is not None:
            return self._publish()
        inbound, journal = self.inbound, self.journal
        head = inbound.head
        pace = journal.pace(head)
        if pace is Pace.SET_ASIDE:
            codes, end = inbound.peek_many(1)
            inbound.commit_head(end, 1)
            journal.set_aside()
            journal.succeeded(end)
            self.set_aside += 1
            log.error(
                "set aside a code of %d bytes at inbound position %d: the logic process died "
                "on it %d times (a poison code); its requests (one read from one connection) "
                "get no reply; going on without it",
                len(codes[0]) if codes else 0,
                head,
                journal.attempts,
            )
            return 1
        codes, end = inbound.peek_many(1 if pace is Pace.CAREFUL else BATCH_CODES, BATCH_BYTES)
        if not codes:
            return 0
        attempt = journal.begin(head, end)
        if attempt > 1:
            log.warning("attempt %d at inbound position %d, one code at a time", attempt, head)
        outbox = self.outbox
        outbox.clear()
        handle = self.dispatcher.handle
        pos = head
        n = 0
        for code in codes:
            handle(code)
            pos += RECORD_HEADER + len(code)
            n += 1
            if outbox.size >= self.soft_limit:
                break
        replies, size = outbox.take()
        self.held = (replies, size, pos, n)
        return self._publish()

    def _publish(self) -> int:
        assert self.held is not None
        replies, size, in_head, n = self.held
        outbound = self.outbound
        if outbound.room() < size:
            return self.BLOCKED
        self.journal.record(outbound.tail + size, in_head, n)
        pushed = outbound.push_many(replies)
        if pushed != len(replies):  # cannot happen: the room was checked
            raise RuntimeError(f"published {pushed} of {len(replies)} replies")
        self.steps += 1
        if self.after_publish is not None:
            self.after_publish(self.steps)
        self.inbound.commit_head(in_head, n)
        self.journal.succeeded(in_head)
        self.held = None
        return n
