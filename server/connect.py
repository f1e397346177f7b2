"""The connect process: the only one that touches client sockets.

One non-blocking ``selectors`` loop holds the listening socket, every client
socket and the doorbell of the outbound queue.  Each turn::

    1. heartbeat
    2. pop outbound codes -> append frames to the clients' output buffers
       (SEND: one client; BROADCAST: all but one; CLOSE: after its output)
    3. write what the sockets take; keep the rest, bounded
    4. push waiting inbound codes; when the inbound queue is full, stop
       reading every socket until it has room again (nothing is dropped)
    5. select: sockets ready to read become MESSAGE codes, new clients
       OPENED codes, ended clients CLOSED codes

Limits that protect everybody else from one client:

* a frame over ``max_frame`` (or garbage announcing one) closes that client;
* more than ``out_buffer`` unread reply bytes pause reading from it; four
  times that, or ``send_timeout`` seconds without it taking a byte, close it;
* ``idle_timeout`` seconds without input close it;
* when ``max_conns`` clients are connected, a new one is told
  ``full_message`` and closed.

Connection ids carry the slot's generation, kept in the segment
(``server.conntable``), so a reply to a connection of a dead connect process
is dropped and counted, never delivered to a newcomer in the same slot.  A
restarted connect process closes the slots its predecessor left open and
tells the logic process (CLOSED codes): those connections are lost.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import selectors
import signal
import socket
import time
from typing import Any

from .codes import Kind, encode
from .config import ServerConfig
from .errors import FrameTooLarge
from .framing import Framing, make_framing
from .segment import ServerSegment
from .status import Role

log = logging.getLogger("server.connect")

READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
RECV_SIZE = 256 * 1024
ACCEPTS_PER_TURN = 64
OUT_CODES_PER_TURN = 4096
GRACE = 1e-3  # first sleep on the doorbell (see server.codequeue)
TICK = 0.5  # longest sleep: heartbeats and timers run at least this often
ROOM_POLL = 2e-3  # while the inbound queue is full
STOP_DEADLINE = 5.0  # seconds a graceful stop waits for queued work

_SEND, _BROADCAST, _CLOSE = Kind.SEND.value, Kind.BROADCAST.value, Kind.CLOSE.value
_DOORBELL = "doorbell"
_LISTENER = "listener"


class Client:
    __slots__ = (
        "sock",
        "fd",
        "conn",
        "slot",
        "peer",
        "framing",
        "out",
        "events",
        "last_input",
        "last_output",
        "closing",
        "prefix",
    )

    def __init__(self, sock: socket.socket, conn: int, slot: int, peer: str, framing: Framing):
        self.sock = sock
        self.fd = sock.fileno()
        self.conn = conn
        self.slot = slot
        self.peer = peer
        self.framing = framing
        self.out = bytearray()
        self.events = 0
        self.last_input = self.last_output = time.monotonic()
        self.closing = ""  # the app asked to close: reason, once the output is out
        self.prefix = encode(Kind.MESSAGE, conn)  # + frames = its inbound code


class ConnectProcess:
    def __init__(self, cfg: ServerConfig, seg: ServerSegment, listener: socket.socket) -> None:
        self.cfg = cfg
        self.seg = seg
        self.inbound = seg.inbound
        self.outbound = seg.outbound
        self.status = seg.status
        self.conns = seg.conns
        self.listener = listener
        listener.setblocking(False)
        self.sel = selectors.DefaultSelector()
        self.clients: dict[int, Client] = {}  # by connection id
        self.free_slots = list(range(cfg.max_conns - 1, -1, -1))  # pop() gives slot 0 first
        self.inq: list[bytes] = []  # inbound codes of this turn
        self.backlog: collections.deque[bytes] = collections.deque()  # did not fit
        self.reading = True  # False while the inbound queue is full
        self.accepting = True
        self.stopping = False
        self.asleep = False
        self.hb_words, self.hb_index = self.status.heartbeat_word(Role.CONNECT)
        # A MESSAGE code carries at most this many wire bytes (at least one
        # largest frame: the configuration guarantees the queue holds two).
        self.max_wire = max(cfg.queue_bytes // 4, cfg.max_frame + 4)
        self.full_reply = make_framing(cfg.framing, cfg.max_frame).encode(cfg.full_message.encode())
        self.parent = os.getppid()

    # -- start ------------------------------------------------------------------------
    def start(self) -> None:
        self.inbound.recover_producer()
        self.outbound.recover_consumer()
        lost = self.conns.open_ids()
        for conn in lost:
            self.conns.close(conn)
            self.backlog.append(
                encode(Kind.CLOSED, conn, b"connection lost: connect process restarted")
            )
        self.status.set("connections_open", 0)
        if lost:
            self.status.add("connections_lost", len(lost))
            log.warning(
                "%d client connection(s) of the previous connect process were lost; "
                "telling the logic process they closed",
                len(lost),
            )
        self.sel.register(self.listener, READ, _LISTENER)
        self.sel.register(self.outbound.fileno(), READ, _DOORBELL)  # binds the doorbell
        signal.signal(signal.SIGTERM, self._on_term)

    def _on_term(self, signum: int, frame: Any) -> None:
        self.stopping = True

    # -- the loop -----------------------------------------------------------------------
    def run(self) -> None:
        self.start()
        next_timers = time.monotonic() + 1.0
        hb, hbi = self.hb_words, self.hb_index
        stop_deadline = 0.0
        while True:
            hb[hbi] += 1
            self.deliver()
            if self.backlog:
                self.push_backlog()
            if self.stopping:
                if not stop_deadline:
                    stop_deadline = time.monotonic() + STOP_DEADLINE
                    self.begin_stop()
                if self.stop_done() or time.monotonic() > stop_deadline:
                    break
            timeout = self.choose_timeout()
            events = self.sel.select(timeout)
            if self.asleep and events:
                self.outbound.finish_wait()
                self.asleep = False
            for key, mask in events:
                data = key.data
                if data is _DOORBELL:
                    continue
                if data is _LISTENER:
                    self.accept()
                    continue
                client: Client = data
                if client.conn not in self.clients:
                    continue  # closed earlier in this turn
                if mask & WRITE:
                    self.flush(client)
                if mask & READ and client.conn in self.clients:
                    self.read(client)
            if self.inq:
                self.push_turn()
            now = time.monotonic()
            if now >= next_timers:
                next_timers = now + 1.0
                self.timers(now)
                if os.getppid() != self.parent:
                    log.warning("the supervisor is gone; stopping")
                    self.stopping = True
        self.finish_stop()

    def choose_timeout(self) -> float:
        if not self.outbound.empty():
            return 0.0
        if self.backlog:
            return ROOM_POLL
        if self.stopping:
            return 0.05
        if self.asleep:
            return TICK
        if self.outbound.prepare_wait():
            self.asleep = True
            return GRACE
        return 0.0

    # -- outbound: codes -> sockets ---------------------------------------------------------
    def deliver(self) -> None:
        codes = self.outbound.pop_many(OUT_CODES_PER_TURN, 1 << 20)
        if not codes:
            return
        clients = self.clients
        dirty: dict[int, Client] = {}
        dropped = 0
        for code in codes:  # bodies are wire frames already (see server.codes)
            kind = code[0]
            conn = int.from_bytes(code[1:9], "little")
            if kind == _SEND:
                c = clients.get(conn)
                if c is None:
                    dropped += 1
                    continue
                c.out += code[9:]
                dirty[conn] = c
            elif kind == _BROADCAST:
                frame = code[9:]
                for other, c in clients.items():
                    if other != conn and not c.closing:
                        c.out += frame
                        dirty[other] = c
            elif kind == _CLOSE:
                c = clients.get(conn)
                if c is None:
                    dropped += 1
                    continue
                c.closing = code[9:].decode(errors="replace") or "closed by the app"
                dirty[conn] = c
            else:
                log.error("skipping an outbound code of unknown kind %d (corrupt queue?)", kind)
        if dropped:
            self.status.add("replies_dropped", dropped)
        for c in dirty.values():
            if c.conn in clients:
                self.flush(c)

    def flush(self, c: Client) -> None:
        if c.out:
            try:
                sent = c.sock.send(c.out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as err:
                self.close(c, f"send failed: {err.strerror or err}")
                return
            if sent:
                del c.out[:sent]
                c.last_output = time.monotonic()
        if not c.out and c.closing:
            self.close(c, c.closing)
            return
        if len(c.out) > 4 * self.cfg.out_buffer:
            self.close(
                c, f"client does not read its replies ({len(c.out)} bytes waiting)", abuse=True
            )
            return
        self.update_interest(c)

    # -- inbound: sockets -> codes ---------------------------------------------------------------
    def read(self, c: Client) -> None:
        try:
            data = c.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:
            self.close(c, f"receive failed: {err.strerror or err}")
            return
        if not data:
            if c.framing.buffered:
                self.close(
                    c, f"client closed the connection mid-frame ({c.framing.buffered} bytes)"
                )
            else:
                self.close(c, "client closed the connection")
            return
        c.last_input = time.monotonic()
        try:
            wire = c.framing.take(data)  # the complete frames, as they came
        except FrameTooLarge as err:
            self.close(c, f"frame too large: {err}", abuse=True)
            return
        if len(wire) > self.max_wire:  # keep every code well inside the queue
            self.inq += [c.prefix + piece for piece in c.framing.cut(wire, self.max_wire)]
        elif wire:
            self.inq.append(c.prefix + wire)

    def push(self, codes: list[bytes]) -> None:
        """Queue inbound codes; they go out, in order, at the end of the turn."""
        self.inq += codes

    def push_turn(self) -> None:
        """Push this turn's inbound codes with one queue update."""
        codes, self.inq = self.inq, []
        if self.backlog:
            self.backlog.extend(codes)
            return
        n = self.inbound.push_many(codes)
        if n < len(codes):
            self.backlog.extend(codes[n:])
            self.pause_reading()

    def push_backlog(self) -> None:
        backlog = self.backlog
        while backlog:
            n = self.inbound.push_many(itertools.islice(backlog, 1024))
            if not n:
                break
            for _ in range(n):
                backlog.popleft()
        if not backlog and not self.reading:
            self.resume_reading()
        elif backlog and self.reading:
            self.pause_reading()

    def pause_reading(self) -> None:
        if self.reading:
            self.reading = False
            log.debug("inbound queue full: reading from clients paused")
            for c in list(self.clients.values()):
                self.update_interest(c)
            self.update_listener()

    def resume_reading(self) -> None:
        self.reading = True
        log.debug("inbound queue has room: reading from clients resumed")
        for c in list(self.clients.values()):
            self.update_interest(c)
        self.update_listener()

    def update_interest(self, c: Client) -> None:
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
        if want == c.events:
            return
        if not c.events:
            self.sel.register(c.sock, want, c)
        elif not want:
            self.sel.unregister(c.sock)
        else:
            self.sel.modify(c.sock, want, c)
        c.events = want

    def update_listener(self) -> None:
        want = self.accepting and self.reading and not self.stopping
        registered = self.listener.fileno() in self.sel.get_map()
        if want and not registered:
            self.sel.register(self.listener, READ, _LISTENER)
        elif registered and not want:
            self.sel.unregister(self.listener)

    # -- connections ---------------------------------------------------------------------------------
    def accept(self) -> None:
        for _ in range(ACCEPTS_PER_TURN):
            try:
                sock, addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # EMFILE and friends: try again next turn
                log.error("accept failed: %s", err)
                return
            peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
            if not self.free_slots:
                self.refuse(sock, peer)
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            slot = self.free_slots.pop()
            conn = self.conns.open(slot)
            c = Client(sock, conn, slot, peer, make_framing(self.cfg.framing, self.cfg.max_frame))
            self.clients[conn] = c
            self.status.add("connections_accepted")
            self.status.set("connections_open", len(self.clients))
            self.update_interest(c)
            log.debug("connection %#x from %s", conn, peer)
            self.push([encode(Kind.OPENED, conn, peer.encode())])

    def refuse(self, sock: socket.socket, peer: str) -> None:
        self.status.add("connections_refused")
        log.warning(
            "refused %s: %d connections is the limit (--max-conns)", peer, self.cfg.max_conns
        )
        try:
            sock.setblocking(False)
            sock.send(self.full_reply)
        except OSError:
            pass
        sock.close()

    def close(self, c: Client, reason: str, *, abuse: bool = False) -> None:
        del self.clients[c.conn]
        if c.events:
            self.sel.unregister(c.sock)
            c.events = 0
        c.sock.close()
        self.conns.close(c.conn)
        self.free_slots.append(c.slot)
        self.status.set("connections_open", len(self.clients))
        if abuse:
            self.status.add("closed_for_abuse")
            log.warning("closed connection %#x from %s: %s", c.conn, c.peer, reason)
        else:
            log.debug("closed connection %#x from %s: %s", c.conn, c.peer, reason)
        self.push([encode(Kind.CLOSED, c.conn, reason.encode())])

    def timers(self, now: float) -> None:
        idle = self.cfg.idle_timeout
        stalled = self.cfg.send_timeout
        for c in list(self.clients.values()):
            if c.out and now - c.last_output > stalled:
                self.close(
                    c,
                    f"client took no reply bytes for {now - c.last_output:.0f} s "
                    f"({len(c.out)} waiting)",
                    abuse=True,
                )
            elif idle and now - c.last_input > idle and not c.out:
                self.close(c, f"idle for {now - c.last_input:.0f} s (--idle-timeout)", abuse=True)

    # -- graceful stop ---------------------------------------------------------------------------------------
    def begin_stop(self) -> None:
        log.info(
            "stopping: no new connections, no new requests; delivering what is queued "
            "(%d connection(s) open)",
            len(self.clients),
        )
        self.accepting = False
        self.update_listener()
        self.listener.close()
        for c in list(self.clients.values()):
            self.update_interest(c)

    def stop_done(self) -> bool:
        """Every request was answered and every reply written."""
        if self.backlog or not self.inbound.empty() or not self.outbound.empty():
            return False
        return not any(c.out for c in self.clients.values())

    def finish_stop(self) -> None:
        for c in list(self.clients.values()):
            if c.out:
                log.warning(
                    "connection %#x: %d reply bytes could not be written", c.conn, len(c.out)
                )
            self.close(c, "server stopping")
        self.push_turn()
        self.push_backlog()
        if self.backlog:
            log.warning(
                "%d CLOSED code(s) did not fit in the inbound queue: the app is not told "
                "that those connections closed",
                len(self.backlog),
            )
        self.sel.close()
        log.info("stopped")


def main(cfg: ServerConfig, listen_fd: int) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when we stop
    listener = socket.socket(fileno=listen_fd)
    seg = ServerSegment.attach(cfg)
    try:
        proc = ConnectProcess(cfg, seg, listener)
        log.info(
            "started: clients on %s:%d, %d codes waiting outbound",
            *listener.getsockname()[:2],
            len(seg.outbound),
        )
        proc.run()
    finally:
        seg.detach()
    return 0
