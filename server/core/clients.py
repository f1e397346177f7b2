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
from collections.abc import Callable, Iterable, Sequence

from ..errors import FrameTooLarge
from .client import Client, Counters
from .codes import HEADER_SIZE, Kind, encode, head_of
from .config import ServerConfig
from .conntable import ConnTable
from .framing import Chunk, make_framing
from .inflow import Item, fitting, read_items
from .streams import INBOUND, StreamLedger
from .succession import Succession

log = logging.getLogger("server.connect")

__all__ = ["READ", "WRITE", "Client", "ClientTable", "Counters"]

READ, WRITE = 1, 2  # interest flags (the same bits as selectors' events)
PUSH_CHUNK = 1024  # backlog codes offered to the queue per call
HANDOVER_CODES = 8  # a turn's codes go to the logic process once this many wait
HANDOVER_BYTES = 64 * 1024

_SEND, _BROADCAST, _CLOSE = Kind.SEND.value, Kind.BROADCAST.value, Kind.CLOSE.value


def _ignore(client: Client, reason: str) -> None:
    pass


class ClientTable(Succession):
    def __init__(
        self,
        cfg: ServerConfig,
        conns: ConnTable,
        counters: Counters,
        on_closed: Callable[[Client, str], None] = _ignore,
        streams: StreamLedger | None = None,
    ) -> None:
        self.cfg = cfg
        self.streams = streams  # the inbound counts are committed here before each push
        self.conns = conns
        self.counters = counters
        self.on_closed = on_closed
        self.clients: dict[int, Client] = {}  # by connection id
        self.free_slots = list(range(cfg.max_conns - 1, -1, -1))  # pop() gives slot 0 first
        self.inq: list[Item] = []  # inbound codes of this turn (server.core.inflow)
        self.inq_bytes = 0  # the size of the MESSAGE codes among them
        self.backlog: collections.deque[Item] = collections.deque()  # did not fit
        self.pushed: dict[Client, int] = {}  # stream offsets queued: take them out of the socket
        self.reading = True  # False while the inbound queue is full
        self.stopping = False
        # A MESSAGE code carries at most this many wire bytes (at least one
        # largest frame: the configuration guarantees the queue holds two).
        self.max_wire = max(cfg.queue_bytes // 4, cfg.max_frame + 4)
        self.full_reply = make_framing(cfg.framing, cfg.max_frame).encode(cfg.full_message.encode())

    # -- connections ----------------------------------------------------------------
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
        self.inq.append((encode(Kind.OPENED, conn, peer.encode()), None, 0))
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
        self.inq.append((encode(Kind.CLOSED, c.conn, reason.encode()), None, 0))
        self.on_closed(c, reason)

    def is_open(self, c: Client) -> bool:
        return self.clients.get(c.conn) is c

    # -- inbound: bytes -> codes ------------------------------------------------------------
    def received(self, c: Client, data: Chunk, now: float) -> None:
        """What one read returned (``b""``: the client closed its side).
        The bytes stay in the socket until their codes are queued (see
        ``push``): ``c.received`` counts what was seen."""
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
        framing = c.framing
        partial = framing.buffered
        try:
            bodies = framing.take(data, self.max_wire)  # whole frames, as records
        except FrameTooLarge as err:
            self.close(c, f"frame too large: {err}", abuse=True)
            return
        if framing.buffered and (bodies or not partial):
            c.frame_started = now  # a new frame began
        end = c.received - framing.buffered
        self.inq_bytes += partial + len(data) - framing.buffered  # in whole frames
        if len(bodies) == 1:
            self.inq.append((c.prefix + bodies[0], c, end))
        elif bodies:
            self.inq += read_items(c, bodies, end, exact=framing.name == "length")

    def handover_due(self) -> bool:
        """Push now, before reading on?  Once a few codes (or a large one) wait, so
        that logic works meanwhile; fewer wait for the turn's end, never for a batch."""
        return len(self.inq) >= HANDOVER_CODES or self.inq_bytes >= HANDOVER_BYTES

    def push(
        self,
        push_many: Callable[[Iterable[bytes]], int],
        room: int | None = None,
        tail: int = 0,
        capacity: int = 0,
    ) -> bool:
        """Offer the backlog, then this turn's codes, to the inbound queue
        (``push_many`` returns how many it took, in order; ``room``: its
        free bytes, ``tail``: its tail, when the stream ledger is kept).
        What does not fit waits in the backlog and reading pauses until it
        is gone.  Each client's count in the ledger is committed first, for
        the tail the push will publish; ``pushed`` collects the offsets the
        shell may now take out of the sockets.  (A read whose codes cannot
        be cut and do not fit even in the empty queue, ``capacity`` bytes,
        is pushed in parts: its client's offset goes to ``pushed`` as -1,
        take everything seen out of the socket; its stream is not exact
        across a crash until its frames are all queued.)  Returns True when reading
        paused or resumed: the shell then asks ``interest`` again for every
        client, and for the listener."""
        backlog = self.backlog
        if self.inq:
            backlog.extend(self.inq)
            self.inq = []
            self.inq_bytes = 0
        streams = self.streams if room is not None else None
        while backlog:
            items = list(itertools.islice(backlog, PUSH_CHUNK))
            ends: dict[Client, int] = {}
            if room is None:
                take, size = len(items), 0
            else:
                take, size, ends = fitting(items, room)
                if not take and room >= capacity > 0:  # it never will: push it in parts
                    take, size, _ = fitting([(code, None, 0) for code, _c, _e in items], room)
                    ends = {c: -1 for _code, c, _end in items[:take] if c is not None}
            if not take:
                break
            if streams is not None:
                for c, end in ends.items():
                    if end >= 0 and self.is_open(c):
                        streams.commit(c.slot, INBOUND, end, tail + size, tail)
            n = push_many([code for code, _c, _end in items[:take]])
            if n < take and room is not None:
                raise RuntimeError(f"the queue took {n} of {take} codes that fit in {room} bytes")
            for _ in range(n):
                backlog.popleft()
            if room is None:
                ends = {c: end for _code, c, end in items[:n] if c is not None and end >= 0}
            else:
                room, tail = room - size, tail + size
            self.pushed.update(ends)
            if n < len(items):
                break
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
    def deliver(self, codes: Sequence[Chunk], unborn: frozenset[int] = frozenset()) -> list[Client]:
        """Append the replies of outbound ``codes`` (bytes, or views of the queue:
        none is kept) to their clients' output; returns the clients with
        something new to write (or to close).  A code for a gone connection is
        dropped and counted.  After a crash codes are delivered again
        (``server.core.streams``): the connections in ``unborn`` are not to
        get these codes (they had them), and a client's ``skip_out`` bytes
        are dropped (its kernel took them)."""
        clients = self.clients
        if unborn:
            clients = {conn: c for conn, c in clients.items() if conn not in unborn}
        dirty: dict[int, Client] = {}
        dropped = 0
        for code in codes:  # bodies are wire bytes already (see server.core.codes)
            kind, conn = head_of(code)
            if kind == _SEND:
                c = clients.get(conn)
                if c is None:
                    dropped += conn not in unborn
                    continue
                c.out += memoryview(code)[HEADER_SIZE:]  # one copy, not two
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
                    dropped += conn not in unborn
                    continue
                reason = bytes(code[HEADER_SIZE:]).decode(errors="replace")
                c.closing = reason or "closed by the app"
                dirty[conn] = c
            else:
                log.error("skipping an outbound code of unknown kind %d (corrupt queue?)", kind)
        if dropped:
            self.counters.add("replies_dropped", dropped)
        for c in dirty.values():
            if c.skip_out:
                n = min(c.skip_out, len(c.out))
                del c.out[:n]
                c.skip_out -= n
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
                log.warning("connection %#x: %d reply bytes were not written", c.conn, len(c.out))
            self.close(c, reason)

    def warn_unsent(self) -> None:
        """At the very end: say what could not be handed to the logic process."""
        if self.backlog:
            log.warning(
                "%d CLOSED code(s) did not fit in the inbound queue: the app is not told "
                "that those connections closed",
                len(self.backlog),
            )
