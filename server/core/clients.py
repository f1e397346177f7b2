"""The connect process's client table: every client's state and every policy
about clients, without a socket (pure: bytes and times in, decisions out).

``server.proc.connect`` is the shell around it: it accepts, reads and writes
sockets, moves codes between the queues and this table, and does what the
table decides.  The table never calls the operating system, so each policy
below is tested by feeding it bytes (one at a time and all at once) and
times (a plain number for a clock)::

    shell                                  table
    -----                                  -----
    accept() -> peer                       open(peer, now) -> conn id, or None: full
    recv() -> data (b"" at EOF)            received(c, data, now): frames become
                                             MESSAGE codes; EOF, a frame over the
                                             limit -> close
    inbound.push_many                      push(push_many) -> True when reading
                                             paused or resumed (back-pressure)
    outbound.pop_many -> codes             deliver(codes) -> clients with output
    send(c.out) -> n                       wrote(c, n, now) -> still open?
    once a second                          tick(now): idle and send timeouts
    selector registration                  interest(c) -> READ | WRITE
    close the socket                       on_closed(c): called for every close

Limits that protect everybody else from one client:

* a frame over ``max_frame`` (or garbage announcing one) closes that client;
* more than ``out_buffer`` unread reply bytes pause reading from it; four
  times that, or ``send_timeout`` seconds without it taking a byte (its
  socket's send queue counts: see ``tick``), close it;
* ``idle_timeout`` seconds without input close it;
* ``frame_timeout`` seconds to finish a frame it began, or it is closed
  (else a client sending a byte a second holds its slot for ever);
* beyond ``max_conns`` clients, a new one is refused (sent ``full_reply``);
* when the inbound queue is full, reading from *every* client stops until
  it has room again: codes wait in ``backlog``, nothing is dropped.

Inbound codes carry whole frames only (``server.core.codes``): the bytes of
an incomplete frame stay in the client's framer.  A MESSAGE code holds at
most ``max_wire`` bytes of frames (a quarter of the queue, or one largest
frame), so every code fits in the queue with room to spare.

Every close, whoever decided it, goes through ``close``: it frees the slot
in the connection table (``server.core.conntable``: the generation stays,
so a late reply is dropped, never delivered to the slot's next client),
queues the CLOSED code that tells the app, counts it, and calls
``on_closed`` so the shell lets go of the socket.
"""

from __future__ import annotations

import collections
import itertools
import logging
from collections.abc import Callable, Iterable

from ..errors import FrameTooLarge, HandoverError
from .client import Client, Counters
from .codes import HEADER_SIZE, Kind, encode, head_of
from .config import ServerConfig
from .conntable import ConnTable
from .framing import make_framing
from .handover import ClientState

log = logging.getLogger("server.connect")

__all__ = ["READ", "WRITE", "Client", "ClientTable", "Counters"]

READ, WRITE = 1, 2  # interest flags (the same bits as selectors' events)
PUSH_CHUNK = 1024  # backlog codes offered to the queue per call

_SEND, _BROADCAST, _CLOSE = Kind.SEND.value, Kind.BROADCAST.value, Kind.CLOSE.value


def _ignore(client: Client, reason: str) -> None:
    pass


class ClientTable:
    def __init__(
        self,
        cfg: ServerConfig,
        conns: ConnTable,
        counters: Counters,
        on_closed: Callable[[Client, str], None] = _ignore,
    ) -> None:
        self.cfg = cfg
        self.conns = conns
        self.counters = counters
        self.on_closed = on_closed
        self.clients: dict[int, Client] = {}  # by connection id
        self.free_slots = list(range(cfg.max_conns - 1, -1, -1))  # pop() gives slot 0 first
        self.inq: list[bytes] = []  # inbound codes of this turn
        self.fed: dict[int, Client] = {}  # clients read from since the queue took all
        self.backlog: collections.deque[bytes] = collections.deque()  # did not fit
        self.reading = True  # False while the inbound queue is full
        self.stopping = False
        # A MESSAGE code carries at most this many wire bytes (at least one
        # largest frame: the configuration guarantees the queue holds two).
        self.max_wire = max(cfg.queue_bytes // 4, cfg.max_frame + 4)
        self.full_reply = make_framing(cfg.framing, cfg.max_frame).encode(cfg.full_message.encode())

    # -- connections ----------------------------------------------------------------
    def restart(self) -> int:
        """A new connect process starts: the connections its predecessor
        left open in the connection table, and did not hand over, are lost;
        tell the app (CLOSED codes).  Returns how many there were."""
        lost = [conn for conn in self.conns.open_ids() if conn not in self.clients]
        for conn in lost:
            self.conns.close(conn)
            self.backlog.append(
                encode(Kind.CLOSED, conn, b"connection lost: connect process restarted")
            )
        self.counters.set("connections_open", len(self.clients))
        if lost:
            self.counters.add("connections_lost", len(lost))
            log.warning(
                "%d client connection(s) of the previous connect process were lost; "
                "telling the logic process they closed",
                len(lost),
            )
        return len(lost)

    def adopt(self, states: list[ClientState], codes: list[bytes]) -> list[Client]:
        """Before ``restart``: take over the clients and the inbound codes a
        predecessor handed over (``server.core.handover``).  The codes go
        first into the backlog; each client keeps its id and slot, its
        incomplete frame and its unwritten replies."""
        taken = set()
        adopted = []  # nothing changes until every client was checked
        for s in states:
            if not self.conns.is_open(s.conn) or s.slot in taken:
                raise HandoverError(
                    f"connection {s.conn:#x} (slot {s.slot}) is not open in the connection "
                    f"table, or handed over twice",
                    found=s.conn,
                )
            framing = make_framing(self.cfg.framing, self.cfg.max_frame)
            try:
                complete = framing.take(s.partial)
            except FrameTooLarge as err:
                raise HandoverError(f"connection {s.conn:#x}: {err}", found=s.conn) from None
            if complete:
                raise HandoverError(
                    f"connection {s.conn:#x}: its incomplete frame is a complete one", found=s.conn
                )
            c = Client(s.conn, s.slot, s.peer, framing, s.last_input)
            c.last_output, c.frame_started, c.closing = s.last_output, s.frame_started, s.closing
            c.out += s.out
            taken.add(s.slot)
            adopted.append(c)
        self.clients.update((c.conn, c) for c in adopted)
        self.free_slots = [slot for slot in self.free_slots if slot not in taken]
        self.backlog.extend(codes)
        self.counters.set("connections_open", len(self.clients))
        return adopted

    def export(self) -> tuple[list[ClientState], list[bytes]]:
        """Every client and every inbound code not yet queued, for a successor."""
        return [c.state() for c in self.clients.values()], [*self.backlog, *self.inq]

    def open(self, peer: str, now: float) -> Client | None:
        """A client connected; None when the server is full (refused and
        counted: the shell sends it ``full_reply`` and closes it)."""
        if not self.free_slots:
            self.counters.add("connections_refused")
            log.warning(
                "refused %s: %d connections is the limit (--max-conns)", peer, self.cfg.max_conns
            )
            return None
        slot = self.free_slots.pop()
        conn = self.conns.open(slot)
        c = Client(conn, slot, peer, make_framing(self.cfg.framing, self.cfg.max_frame), now)
        self.clients[conn] = c
        self.counters.add("connections_accepted")
        self.counters.set("connections_open", len(self.clients))
        log.info("connection %#x from %s", conn, peer)
        self.inq.append(encode(Kind.OPENED, conn, peer.encode()))
        return c

    def close(self, c: Client, reason: str, *, abuse: bool = False) -> None:
        if self.clients.pop(c.conn, None) is None:
            return  # closed already
        self.conns.close(c.conn)
        self.free_slots.append(c.slot)
        self.counters.set("connections_open", len(self.clients))
        if abuse:
            self.counters.add("closed_for_abuse")
            log.warning("closed connection %#x from %s: %s", c.conn, c.peer, reason)
        else:
            log.info("closed connection %#x from %s: %s", c.conn, c.peer, reason)
        self.inq.append(encode(Kind.CLOSED, c.conn, reason.encode()))
        self.on_closed(c, reason)

    def is_open(self, c: Client) -> bool:
        return self.clients.get(c.conn) is c

    # -- inbound: bytes -> codes ------------------------------------------------------------
    def received(self, c: Client, data: bytes, now: float) -> None:
        """What one read returned (``b""``: the client closed its side)."""
        if not data:
            if c.framing.buffered:
                self.close(
                    c, f"client closed the connection mid-frame ({c.framing.buffered} bytes)"
                )
            else:
                self.close(c, "client closed the connection")
            return
        c.last_input = now
        c.received += len(data)
        self.fed[c.conn] = c
        framing = c.framing
        partial = framing.buffered
        try:
            bodies = framing.take(data, self.max_wire)  # whole frames, as records
        except FrameTooLarge as err:
            self.close(c, f"frame too large: {err}", abuse=True)
            return
        if framing.buffered and (bodies or not partial):
            c.frame_started = now  # a new frame began
        if len(bodies) == 1:
            self.inq.append(c.prefix + bodies[0])
        elif bodies:
            prefix = c.prefix
            self.inq += [prefix + body for body in bodies]

    def push(self, push_many: Callable[[Iterable[bytes]], int]) -> bool:
        """Offer the backlog, then this turn's codes, to the inbound queue
        (``push_many`` returns how many it took, in order).  What does not
        fit waits in the backlog and reading pauses until it is gone.
        Returns True when reading paused or resumed: the shell then asks
        ``interest`` again for every client, and for the listener."""
        backlog = self.backlog
        while backlog:
            n = push_many(itertools.islice(backlog, PUSH_CHUNK))
            if not n:
                break
            for _ in range(n):
                backlog.popleft()
        if self.inq:
            codes, self.inq = self.inq, []
            if backlog:
                backlog.extend(codes)
            else:
                n = push_many(codes)
                if n < len(codes):
                    backlog.extend(codes[n:])
        reading = not backlog
        if reading == self.reading:
            return False
        self.reading = reading
        log.debug(
            "inbound queue %s: reading from clients %s",
            "has room" if reading else "full",
            "resumed" if reading else "paused",
        )
        return True

    # -- outbound: codes -> bytes -------------------------------------------------------------
    def deliver(self, codes: list[bytes]) -> list[Client]:
        """Append the replies of outbound ``codes`` to their clients' output;
        returns the clients that have something new to write (or to close).
        A code for a connection that is gone is dropped and counted."""
        clients = self.clients
        dirty: dict[int, Client] = {}
        dropped = 0
        for code in codes:  # bodies are wire bytes already (see server.core.codes)
            kind, conn = head_of(code)
            if kind == _SEND:
                c = clients.get(conn)
                if c is None:
                    dropped += 1
                    continue
                c.out += code[HEADER_SIZE:]
                c.delivered += len(code) - HEADER_SIZE
                dirty[conn] = c
            elif kind == _BROADCAST:
                frame = code[HEADER_SIZE:]
                for other, c in clients.items():
                    if other != conn and not c.closing:
                        c.out += frame
                        c.delivered += len(frame)
                        dirty[other] = c
            elif kind == _CLOSE:
                c = clients.get(conn)
                if c is None:
                    dropped += 1
                    continue
                c.closing = code[HEADER_SIZE:].decode(errors="replace") or "closed by the app"
                dirty[conn] = c
            else:
                log.error("skipping an outbound code of unknown kind %d (corrupt queue?)", kind)
        if dropped:
            self.counters.add("replies_dropped", dropped)
        return list(dirty.values())

    def wrote(self, c: Client, n: int, now: float) -> bool:
        """The socket took ``n`` bytes of ``c.out``.  False if that closed
        the client (its output is out and the app asked to close it, or it
        leaves far too much unread)."""
        if n:
            del c.out[:n]
            c.sent += n
        if not c.out and c.closing:
            self.close(c, c.closing)
            return False
        if len(c.out) > 4 * self.cfg.out_buffer:
            self.close(
                c, f"client does not read its replies ({len(c.out)} bytes waiting)", abuse=True
            )
            return False
        return True

    def interest(self, c: Client) -> int:
        """READ and/or WRITE: what the shell should wait for on ``c``."""
        want = 0
        if (
            self.reading
            and not self.stopping
            and not c.closing
            and len(c.out) <= self.cfg.out_buffer
        ):
            want |= READ
        if c.out:
            want |= WRITE
        return want

    @property
    def accepting(self) -> bool:
        """Should the shell accept new clients now?"""
        return self.reading and not self.stopping

    # -- timers ---------------------------------------------------------------------------------
    def tick(self, now: float, queued: Callable[[Client], int] = lambda c: 0) -> None:
        """Close clients that left replies unread for ``send_timeout``, sent
        nothing for ``idle_timeout`` (0: never), or did not finish a frame in
        ``frame_timeout``.

        ``queued(c)``: the bytes in ``c``'s socket send queue (``SIOCOUTQ``).
        The peer took bytes since the last tick if that queue shrank by more
        than was written since (a kernel buffer can hold megabytes)."""
        idle = self.cfg.idle_timeout
        stalled = self.cfg.send_timeout
        for c in list(self.clients.values()):
            # an empty send queue with nothing written since stays empty: no call
            q = queued(c) if c.queued or c.sent != c.sent_seen else 0
            if c.queued + (c.sent - c.sent_seen) > q:  # the peer acknowledged some
                c.last_output = now
            c.queued, c.sent_seen = q, c.sent
            if (c.out or q) and now - c.last_output > stalled:
                self.close(
                    c,
                    f"client took no reply bytes for {now - c.last_output:.0f} s "
                    f"({len(c.out) + q} waiting)",
                    abuse=True,
                )
            elif idle and now - c.last_input > idle and not c.out:
                self.close(c, f"idle for {now - c.last_input:.0f} s (--idle-timeout)", abuse=True)
            elif c.framing.buffered and now - c.frame_started > self.cfg.frame_timeout:
                self.close(
                    c,
                    f"began a frame {now - c.frame_started:.0f} s ago and sent only "
                    f"{c.framing.buffered} bytes of it (--frame-timeout)",
                    abuse=True,
                )

    # -- graceful stop ----------------------------------------------------------------------------
    def begin_stop(self) -> None:
        """No new clients, no new requests; what is queued is still written."""
        log.info(
            "stopping: no new connections, no new requests; delivering what is queued "
            "(%d connection(s) open)",
            len(self.clients),
        )
        self.stopping = True

    def stop_done(self, queues_empty: bool) -> bool:
        """Every request was answered and every reply written."""
        if self.backlog or self.inq or not queues_empty:
            return False
        return not any(c.out for c in self.clients.values())

    def unwritten(self) -> int:
        return sum(len(c.out) for c in self.clients.values())

    def close_all(self, reason: str) -> None:
        for c in list(self.clients.values()):
            if c.out:
                log.warning(
                    "connection %#x: %d reply bytes could not be written", c.conn, len(c.out)
                )
            self.close(c, reason)

    def warn_unsent(self) -> None:
        """At the very end: say what could not be handed to the logic process."""
        if self.backlog:
            log.warning(
                "%d CLOSED code(s) did not fit in the inbound queue: the app is not told "
                "that those connections closed",
                len(self.backlog),
            )
