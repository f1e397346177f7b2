"""The logic process: inbound codes -> the app -> outbound codes, exactly once.

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

``main`` is the thin shell: attach, recover, then loop ``step()``, sleeping
on the inbound doorbell when there is nothing to do.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

from .app import Dispatcher, Outbox, load_app
from .config import ServerConfig
from .framing import Framing, LengthFraming, make_framing
from .journal import Pace, StepJournal
from .ring import RECORD_HEADER, CodeRing
from .segment import ServerSegment
from .status import Role

log = logging.getLogger("server.logic")

BATCH_CODES = 512
BATCH_BYTES = 256 * 1024
TICK = 0.5  # longest sleep: the heartbeat moves at least this often


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
        crash_at_step: int = 0,
    ) -> None:
        self.inbound = inbound
        self.outbound = outbound
        self.journal = journal
        framing = framing or LengthFraming()
        self.outbox = Outbox(limit=outbound.capacity, encode_frame=framing.encode)
        self.dispatcher = Dispatcher(app, self.outbox, framing.split)
        self.soft_limit = outbound.capacity // 4
        self.held: tuple[list[bytes], int, int, int] | None = None  # codes, size, H, n
        self.set_aside = 0
        # Fault injection for the crash tests: die by SIGKILL right after
        # publishing step number N (0: never), before consuming its codes.
        self.crash_at_step = crash_at_step
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
        if self.steps == self.crash_at_step:
            os.kill(os.getpid(), signal.SIGKILL)
        self.inbound.commit_head(in_head, n)
        self.journal.succeeded(in_head)
        self.held = None
        return n


class _Stop:
    requested = False

    def __call__(self, signum: int, frame: Any) -> None:
        self.requested = True


def main(cfg: ServerConfig) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when we stop
    stop = _Stop()
    signal.signal(signal.SIGTERM, stop)
    app = load_app(cfg.app)()
    seg = ServerSegment.attach(cfg)
    try:
        return _run(seg, app, stop, make_framing(cfg.framing, cfg.max_frame))
    finally:
        seg.detach()


def _run(seg: ServerSegment, app: Any, stop: _Stop, framing: Framing) -> int:
    inbound, outbound, status = seg.inbound, seg.outbound, seg.status
    crash_at_step = int(os.environ.get("STCP_CRASH_AFTER_PUBLISHING_STEP") or 0)  # tests only
    stepper = LogicStepper(inbound.ring, outbound.ring, seg.journal, app, framing, crash_at_step)
    finished = stepper.recover()
    inbound.recover_consumer()
    outbound.recover_producer()
    log.info(
        "started: %d codes pending inbound, %d processed so far%s",
        len(inbound),
        inbound.stats()["popped"],
        f"; finished the step a crashed process had published ({finished} codes)"
        if finished
        else "",
    )
    hb, hbi = status.heartbeat_word(Role.LOGIC)
    parent = os.getppid()
    errors_reported = 0
    backoff = 0.0
    while True:
        hb[hbi] += 1
        done = stepper.step()
        errors = stepper.dispatcher.errors
        if errors != errors_reported:
            status.add("app_errors", errors - errors_reported)
            errors_reported = errors
        if done > 0:
            backoff = 0.0
            continue
        if done == LogicStepper.BLOCKED:
            if stop.requested:  # nobody is left to drain the outbound queue
                log.warning("stopping with replies waiting for room; the next start redoes them")
                break
            backoff = min(0.02, backoff * 2 or 0.0005)
            time.sleep(backoff)  # replies wait for the connect process to drain
            continue
        if stop.requested:
            break
        if os.getppid() != parent:
            log.warning("the supervisor is gone; stopping")
            break
        inbound.wait(timeout=TICK)
    log.info("stopped: %d codes processed in all", inbound.stats()["popped"])
    return 0
