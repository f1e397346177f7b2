"""The connect process: the only one that touches client sockets.

A thin loop that moves bytes between sockets, the two queues and the client
table (``server.core.clients``), where every policy about clients lives:
framing, limits, back-pressure, timeouts, and the codes built from it all.
One non-blocking ``selectors`` loop holds the listening socket, every client
socket and the doorbell of the outbound queue.  Each turn::

    1. pop outbound codes -> table.deliver -> write to those clients
    2. offer waiting inbound codes (table.push); a full queue pauses reading
    3. select: new clients -> table.open, readable -> table.received, writable -> write
    4. push this turn's inbound codes; once a second table.tick (timeouts)

(3 pushes too, whenever a few codes wait: ``table.handover_due``.)

Reads leave bytes in the socket until their frames are queued, and the
outbound head moves only past codes every client's kernel took
(``server.proc.sockets``, ``server.proc.replies``), so a restarted connect
process, handed the supervisor's duplicates of the dead one's sockets,
resumes each stream byte-exact (``server.proc.handover.resume``); the slots
left open that nobody handed over are lost, and the logic process is told
(CLOSED codes).  On SIGHUP the supervisor starts a successor instead, and
the successor's READY on the control socket makes this process hand every
client over.  If the supervisor dies, this process serves on and waits for
a new one to adopt it (``server.proc.adoption``).

SIGTERM (from the supervisor) starts a graceful stop: no new connections or
requests; everything already read is answered and written, for as long as
work moves (``Stall``: it gives up only after ``--stop-timeout`` seconds in
which nothing moved, and says what is left in the segment).
"""

from __future__ import annotations

import logging
import selectors
import signal
import socket
import time

from ..core.clients import Client, ClientTable
from ..core.config import ServerConfig
from ..core.idle import Spinner
from ..core.outflow import ReplyAnchors
from ..core.status import Role
from ..core.supervision import Stall, orphan_leftover, stop_leftover
from ..ipc.segment import ServerSegment
from .adoption import adopted, lost_supervisor, stop_awaiting
from .common import Heartbeat, Parent, enable_stack_dumps, spin_scale
from .handover import hand_over, on_control, take_over
from .keeper import Notices
from .poller import HANGUP, Poller
from .replies import LIGHT, REPLY_SPIN, ReplyFlow
from .sockets import RECV_SIZE, SCRATCH_SIZE, ClientSockets, send_queue

log = logging.getLogger("server.connect")


_DOORBELL, _LISTENER, _CONTROL, _HANDOVER = "doorbell", "listener", "control", "handover"
_ADOPTER = "adopter"  # a new supervisor, after ours died (server.proc.adoption)
# The table's interest bits are selectors' events, so they pass as they are
# (tests/test_clients.py checks that they are the same bits).


class ConnectProcess(ReplyFlow, ClientSockets):
    def __init__(
        self,
        cfg: ServerConfig,
        seg: ServerSegment,
        listener: socket.socket,
        control: socket.socket | None = None,
    ) -> None:
        self.inbound = seg.inbound
        self.outbound = seg.outbound
        self.streams = seg.streams  # where each client's streams stand (a restart resumes them)
        self.cfg = cfg
        self.status = seg.status
        self.written = 0  # reply bytes the sockets took
        self.heartbeat = Heartbeat(seg.status.meter(Role.CONNECT))
        self.progress = self.heartbeat.meter.progress  # codes delivered, for the watchdog
        self.table = ClientTable(cfg, seg.conns, seg.status, self._release, self.streams)
        self.anchors = ReplyAnchors(self.outbound.ring.head, cfg.queue_bytes // 2)  # see run
        self.unborn: dict[int, int] = {}  # after a crash: conn -> the first code it gets again
        self.peek_off = True  # until a socket says SO_PEEK_OFF does not work
        self.read_now: list[Client] = []
        self.again: list[Client] = []
        self.scratch = memoryview(bytearray(SCRATCH_SIZE))
        self.recv_size = RECV_SIZE if cfg.framing == "length" else self._line_recv_size()
        self.listener = listener
        listener.setblocking(False)
        self.listening = False
        self.sel = Poller()  # client sockets edge-triggered (server.proc.poller)
        self.stopping = self.handing_over = self.orphaned = self.adopted = False
        self.adopter: socket.socket | None = None  # while orphaned: where a new supervisor calls
        self.control = control
        self.notices = Notices(control)  # OPEN and CLOSE for the supervisor (its duplicates)
        self.handover: socket.socket | None = None  # given by the supervisor on SIGHUP
        self.asleep = False
        self.spinner = Spinner(REPLY_SPIN * spin_scale())  # before sleeping on the doorbell
        self.handed = self.inbound.ring.tail
        self.spin_until = 0.0
        self.busy = False
        self.now = time.monotonic()

    def _on_term(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _line_recv_size(self) -> int:
        """One read's line-framed codes cannot be cut (``server.core.inflow``):
        read so little that they fit in the queue (a record is at most four
        times its line, an empty one)."""
        return max(1, min(RECV_SIZE, self.table.max_wire // 8))

    # -- the loop ---------------------------------------------------------------------
    def run(self) -> None:
        self.inbound.recover_producer()
        self.outbound.recover_consumer()
        self.anchors = ReplyAnchors(self.outbound.ring.head, self.cfg.queue_bytes // 2)
        self.table.restart()
        for c in list(self.table.clients.values()):  # handed over by a predecessor
            self.update_interest(c)
        self.sel.register(self.outbound.fileno(), selectors.EVENT_READ, _DOORBELL)
        if self.control is not None:
            self.sel.register(self.control, selectors.EVENT_READ, _CONTROL)
        self.update_listener()
        signal.signal(signal.SIGTERM, self._on_term)
        heartbeat = self.heartbeat
        parent = Parent()
        table = self.table
        next_timers = self.now + 1.0
        stall: Stall | None = None
        while not self.handing_over:
            heartbeat.turns += 1
            if self.notices.queue:
                self.notices.flush()
            self.deliver()
            if table.backlog:
                self.push()
            if self.stopping:
                if stall is None:
                    stall = Stall(self.cfg.stop_timeout, self.now)
                    self.begin_stop()
                queues_empty = self.inbound.empty() and self.outbound.empty()
                if table.stop_done(queues_empty):
                    break
                if self.orphaned and self.outbound.empty() and not table.unwritten():
                    log.warning(orphan_leftover(len(self.inbound), len(table.backlog)))
                    break  # nobody will answer what is queued: it waits in the segment
                moved = (self.inbound.ring.head, self.outbound.ring.tail, self.written)
                if stall.expired((*moved, self.status.requests(Role.LOGIC)), self.now):
                    left = (len(self.inbound), len(self.outbound), table.unwritten())
                    log.warning(stop_leftover(self.cfg.stop_timeout, *left))
                    break
            events = self.sel.select(self.choose_timeout())
            self.busy = len(events) > LIGHT  # many at once: no spin for replies (replies.py)
            self.now = time.monotonic()
            if self.asleep and events:
                self.outbound.finish_wait()
                self.asleep = False
            for key, mask in events:
                c = key.data
                if c is _LISTENER:
                    self.accept()
                elif c in (_CONTROL, _HANDOVER):
                    on_control(self, c == _CONTROL)
                elif c is _ADOPTER:
                    adopted(self)
                elif c is not _DOORBELL:
                    if mask & selectors.EVENT_WRITE and table.is_open(c):
                        self.flush(c)
                    if mask & selectors.EVENT_READ and table.is_open(c):
                        self.read(c, mask & HANGUP)  # after a hang-up: to its end
                        if table.handover_due():  # the logic process starts on them now
                            self.push()
            for c in self.take_again() if self.again else ():
                self.read(c, drain=True)
            if table.inq:
                self.push()
            if self.read_now:
                self.consume()
            if self.now >= next_timers:
                next_timers = self.now + 1.0
                table.tick(self.now, send_queue)
                self.take_out_queued()
                if not (self.orphaned or self.adopted) and parent.gone():
                    lost_supervisor(self)
        if self.handing_over:
            hand_over(self, self.handover)  # type: ignore[arg-type]
        else:
            self.finish_stop()

    # -- queues ---------------------------------------------------------------------------
    def push(self) -> None:
        table, ring = self.table, self.inbound.ring
        if table.push(self.inbound.push_many, ring.room(), ring.tail, ring.capacity):
            for c in list(table.clients.values()):  # reading paused or resumed
                self.update_interest(c)
            self.update_listener()
        if table.pushed:
            self.consume()

    def update_interest(self, c: Client) -> None:
        want = self.table.interest(c)
        if want == c.events:
            return
        if not c.events:
            self.sel.register(c.handle, want, c, edge=True)
        elif not want:
            self.sel.unregister(c.handle)
        else:
            self.sel.modify(c.handle, want, c)
        c.events = want

    def update_listener(self) -> None:
        want = self.table.accepting and self.listener.fileno() >= 0
        if want and not self.listening:
            self.sel.register(self.listener, selectors.EVENT_READ, _LISTENER)
        elif self.listening and not want:
            self.sel.unregister(self.listener)
        self.listening = want

    # -- graceful stop --------------------------------------------------------------------------
    def begin_stop(self) -> None:
        self.table.begin_stop()
        self.update_listener()
        self.listener.close()
        for c in list(self.table.clients.values()):
            self.update_interest(c)

    def finish_stop(self) -> None:
        self.table.close_all("server stopping")
        self.notices.flush()
        self.push()
        self.table.warn_unsent()
        if self.adopter is not None:
            stop_awaiting(self.adopter, self.cfg.key)
        self.sel.close()
        log.info("stopped")


def main(cfg: ServerConfig, listen_fd: int, control_fd: int = -1, adopt_fd: int = -1) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when we stop
    enable_stack_dumps()
    listener = socket.socket(fileno=listen_fd)
    control = socket.socket(fileno=control_fd) if control_fd >= 0 else None
    seg = ServerSegment.attach(cfg)
    proc = ConnectProcess(cfg, seg, listener, control)
    try:
        log.info("started: clients on %s:%d", *listener.getsockname()[:2])
        proc.heartbeat.start()
        if adopt_fd >= 0:
            take_over(proc, socket.socket(fileno=adopt_fd))
        proc.run()
    finally:
        proc.heartbeat.stop()
        seg.detach()
    return 0
