"""The logic process's step: inbound codes -> the app -> outbound codes, exactly once.

``LogicStepper`` is the pure core: it works on two ``CodeRing``s and a
``StepJournal`` (plain bytearrays in the tests, the segment in the server).
One ``step()``::

    head = inbound.head
    pace = journal.pace(head)        BATCH, or careful (see below)
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

After a crash the journal says *careful* until the process is past the batch
that was in flight: one code per step, and one request of it per step, each
request's replies published (``record_part``) before the next one runs, so
a death is counted against the request that caused it and only that request
is set aside (``Pace.SET_ASIDE``, after ``MAX_ATTEMPTS``), kept in the
``SetAsideLog`` for ``inspect --set-aside``.

For the watchdog the stepper writes to the status board (``meter``): one
word per request started, a "busy since" stamp around every run of the app,
and the codes it consumed.

On a bus (``room``: ``server.core.bridge``), the step's broadcasts go to
the other servers of the room just before its replies are published, keyed
by where the step ends in the inbound stream, so a redone step is not sent
twice.

The process shell (``server.proc.logic``) only loops ``step()`` and sleeps
on the inbound doorbell when there is nothing to do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .app import Dispatcher, Outbox
from .codering import CodeRing
from .codes import HEADER_SIZE as CODE_HEADER
from .codes import head_of
from .framing import Framing, LengthFraming
from .journal import Pace, StepJournal
from .ring import RECORD_HEADER
from .setaside import SetAsideLog
from .status import WorkerMeter

log = logging.getLogger("server.logic")

BATCH_CODES = 512
BATCH_BYTES = 256 * 1024


class LogicStepper:
    """Runs steps; returns from ``step()`` how many codes it consumed,
    0 when none is pending, BLOCKED when replies wait for outbound room,
    PARTIAL when one request of a code was answered (careful mode)."""

    BLOCKED = -1
    PARTIAL = -2

    def __init__(
        self,
        inbound: CodeRing,
        outbound: CodeRing,
        journal: StepJournal,
        app: Any,
        framing: Framing | None = None,
        after_publish: Callable[[int], None] | None = None,
        meter: WorkerMeter | None = None,
        clock: Callable[[], float] | None = None,
        setaside: SetAsideLog | None = None,
        wall_clock: Callable[[], float] | None = None,
        room: Callable[[int, list[bytes]], bool] | None = None,
    ) -> None:
        self.inbound = inbound
        self.outbound = outbound
        self.journal = journal
        framing = framing or LengthFraming()
        self.outbox = Outbox(
            limit=outbound.capacity, encode_frame=framing.encode, frame_header=framing.header_of
        )
        self.meter = meter
        self.clock = clock or (lambda: 0.0)
        self.setaside = setaside  # where set-aside requests are kept for inspect
        self.wall_clock = wall_clock or (lambda: 0.0)
        self.dispatcher = Dispatcher(app, self.outbox, meter.requests if meter else None)
        self.soft_limit = outbound.capacity // 4
        # replies, their size, the inbound head after them, codes consumed,
        # and (careful mode, inside a code) the next request, else 0
        # and the step's broadcasts for the room (on a bus: ``room``)
        self.held: tuple[list[bytes], int, int, int, int, list[bytes]] | None = None
        self.room = room
        if room is not None:
            self.outbox.remote = []
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
        head = self.inbound.head
        if self.journal.pace(head) is Pace.BATCH:
            return self._batch(head)
        return self._careful(head)

    def _batch(self, head: int) -> int:
        codes, end = self.inbound.peek_many(BATCH_CODES, BATCH_BYTES)
        if not codes:
            return 0
        self.journal.begin(head, end)
        outbox = self.outbox
        outbox.clear()
        handle = self.dispatcher.handle
        self._busy(0)
        pos = head
        n = 0
        for code in codes:
            handle(code)
            pos += RECORD_HEADER + len(code)
            n += 1
            if outbox.size >= self.soft_limit:
                break
        self._busy(None)
        replies, size = outbox.take()
        self.held = (replies, size, pos, n, 0, outbox.take_remote())
        return self._publish()

    def _careful(self, head: int) -> int:
        """One request of the code at ``head``: a step here crashed before."""
        codes, end = self.inbound.peek_many(1)
        if not codes:
            return 0
        code = codes[0]
        journal = self.journal
        sizes = Dispatcher.requests_in(code)
        k = min(journal.frames_done(head, self.outbound.tail), len(sizes) - 1)
        last = k == len(sizes) - 1
        conn = head_of(code)[1] if len(code) >= CODE_HEADER else 0
        if journal.pace(head, k) is Pace.SET_ASIDE:
            attempts = journal.attempts
            journal.set_aside(conn, sizes[k])
            self.set_aside += 1
            if self.setaside is not None:
                payload = Dispatcher.request_payload(code, k)
                self.setaside.add(conn, payload, int(self.wall_clock() * 1000), attempts)
            log.error(
                "set aside request %d of %d (%d bytes) from connection %#x at inbound position "
                "%d: the logic process died on it %d times (a poison request); it gets no "
                "reply; going on without it",
                k + 1,
                len(sizes),
                sizes[k],
                conn,
                head,
                attempts,
            )
            replies: list[bytes] = []
            size = 0
        else:
            attempt = journal.begin(head, end, k)
            if attempt > 1:
                log.warning(
                    "attempt %d at request %d of %d from connection %#x (inbound position %d), "
                    "one request at a time",
                    attempt,
                    k + 1,
                    len(sizes),
                    conn,
                    head,
                )
            self.outbox.clear()
            self._busy(conn)
            self.dispatcher.handle(code, k, 1)
            self._busy(None)
            replies, size = self.outbox.take()
        remote = self.outbox.take_remote()
        if last:
            self.held = (replies, size, end, 1, 0, remote)
        else:
            self.held = (replies, size, head, 0, k + 1, remote)
        return self._publish()

    def _busy(self, conn: int | None) -> None:
        """Tell the watchdog a step runs the app (``conn``: for whom), or no longer."""
        m = self.meter
        if m is not None:
            if conn is None:
                m.busy_since[0] = 0
            else:
                m.busy_conn[0] = conn
                m.busy_since[0] = int(self.clock() * 1000) or 1

    def _publish(self) -> int:
        assert self.held is not None
        replies, size, in_head, n, part, remote = self.held
        outbound = self.outbound
        if outbound.room() < size:
            return self.BLOCKED
        # The room first: a crash after it and before our replies redoes the
        # step, whose message the room then has already (its mark, the key).
        if remote and self.room is not None and not self.room(in_head + part, remote):
            return self.BLOCKED  # a queue of the room is full: try again
        if part:  # one request of a code: its replies out, the code stays
            self.journal.record_part(outbound.tail + size, in_head, part)
            self._push(replies)
            self.journal.confirm_part()
            self.held = None
            return self.PARTIAL
        self.journal.record(outbound.tail + size, in_head, n)
        self._push(replies)
        self.steps += 1
        if self.after_publish is not None:
            self.after_publish(self.steps)
        self.inbound.commit_head(in_head, n)
        self.journal.succeeded(in_head)
        self.held = None
        if self.meter is not None:
            self.meter.progress[0] += n
        return n

    def _push(self, replies: list[bytes]) -> None:
        pushed = self.outbound.push_many(replies)
        if pushed != len(replies):  # cannot happen: the room was checked
            raise RuntimeError(f"published {pushed} of {len(replies)} replies")
