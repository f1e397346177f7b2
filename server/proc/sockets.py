"""The connect process's socket calls: each turns the outcome of one system
call on a client socket, or on the listener, into a call on the client
table (``server.core.clients``).  ``ConnectProcess`` (``server.proc.connect``)
is built on this; nothing here decides anything about a client.

Reading leaves the bytes in the socket (``MSG_PEEK``, from the socket's
``SO_PEEK_OFF``, so each byte is seen once); ``consume`` takes them out
once their frames are queued (``MSG_TRUNC``: discarded, not copied), so a
``kill -9`` between the two loses nothing (``server.core.streams``).  It
does so once a socket holds ``DEFER_BYTES`` of queued frames (or a
quarter of its receive buffer: ``room_for_queued``), not after
every read (that second call per read was the connect process's largest
cost beyond a plain server's), and once a second, and before a close; the
sockets are edge-triggered (``server.proc.poller``), so old bytes do not
make them readable.  The bytes of an incomplete frame stay unread, so
``SO_RCVLOWAT`` is set to where the frame ends (a line: one byte more):
the socket is readable again when that arrives, not at every segment.  A
frame that does not fit is taken out as it comes, as before, and that
connection is then not exact across a crash until the frame is queued:
one past ``peek_window`` (or, on a kernel without ``SO_PEEK_OFF`` for TCP,
before Linux 6.10, past ``SMALL_PEEK``; queued frames are then taken out
at once, as each peek copies them again), or one the kernel's receive
window cannot hold.  Linux then reports the socket readable below the mark
(the client cannot send more until something is read), and, edge-triggered,
only once: so every read compares what the socket holds with the mark, and
one below it makes room at once (``nothing_new``: the queued frames first).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import struct
import termios
import time
from collections.abc import Callable
from selectors import EVENT_READ
from typing import Any

from ..core.clients import Client, ClientTable
from ..core.outflow import ReplyAnchors
from ..core.streams import StreamLedger
from .keeper import Notices

log = logging.getLogger("server.connect")

RECV_SIZE = 256 * 1024
ACCEPTS_PER_TURN = 64
SO_PEEK_OFF = getattr(socket, "SO_PEEK_OFF", 42)  # Linux's number; Python 3.11 lacks it
NO_PEEK_OFF_ENV = "STCP_NO_PEEK_OFF"  # "1": do as on a kernel without it (tests that path)
PEEK_WINDOW = 1 << 20  # at most this many bytes of a client wait unread in its socket
LINE_PEEK = 32 * 1024  # the same for a line, whose length is not known before its end
SMALL_PEEK = 4096  # the same without SO_PEEK_OFF (each peek then copies them again)
SCRATCH_SIZE = RECV_SIZE + SMALL_PEEK
DEFER_BYTES = 64 * 1024  # queued frames left in a socket until there are this many


def send_queue(c: Client) -> int:
    """Bytes in the client's socket send queue, not yet acknowledged by the
    peer (SIOCOUTQ, which Linux numbers as TIOCOUTQ); 0 if unknown."""
    try:
        raw = fcntl.ioctl(c.handle.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except (OSError, ValueError):
        return 0
    return int(struct.unpack("i", raw)[0])


def peek_from_offset(sock: socket.socket) -> bool:
    """Make MSG_PEEK on ``sock`` return only bytes not peeked at before;
    False if this kernel cannot (TCP learned SO_PEEK_OFF in Linux 6.10)."""
    if os.environ.get(NO_PEEK_OFF_ENV) == "1":
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
    except OSError:
        return False
    return True


class ClientSockets:
    table: ClientTable
    listener: socket.socket
    notices: Notices
    streams: StreamLedger
    anchors: ReplyAnchors
    sel: Any
    now: float
    written: int
    peek_off: bool  # SO_PEEK_OFF works for TCP here
    read_now: list[Client]  # clients read from this turn (their SO_RCVLOWAT is looked at)
    again: list[Client]  # their last read filled the buffer: read again without an event
    recv_size: int
    scratch: memoryview  # SCRATCH_SIZE bytes that every read goes through
    reanchor: Callable[[Client], None]  # server.proc.replies

    def update_interest(self, c: Client) -> None:
        raise NotImplementedError

    def flush(self, c: Client) -> None:
        sent = 0
        if c.out:
            try:
                sent = c.handle.send(c.out)
                self.written += sent
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as err:
                self.table.close(c, f"send failed: {err.strerror or err}")
                return
        if self.table.wrote(c, sent, self.now):
            self.update_interest(c)
            if not c.out and (c.unkept or c.anchor != self.anchors.read):
                self.reanchor(c)  # all it was sent is taken: anchor it where the queue is read

    def read(self, c: Client, drain: int = 0) -> None:
        """Peek at the bytes of ``c`` not seen before and make them into codes;
        ``drain``: read on, turn by turn, until the socket holds no more (a
        hang-up was reported, or an earlier read filled the buffer)."""
        seen = c.received - c.consumed
        buf = self.scratch  # recv(256 KiB) would allocate that much per call
        try:
            if self.peek_off:
                want = self.recv_size
                n = c.handle.recv_into(buf, want, socket.MSG_PEEK)
                data = buf[:n]
            else:
                want = seen + self.recv_size
                n = c.handle.recv_into(buf, want, socket.MSG_PEEK)
                if n and n == seen:
                    raise BlockingIOError  # nothing new: see below
                data = buf[seen:n]
        except BlockingIOError:
            if not drain:  # (when draining, that is the end looked for)
                self.nothing_new(c)
            return
        except InterruptedError:
            return
        except OSError as err:
            self.table.close(c, f"receive failed: {err.strerror or err}")
            return
        if n == want or (drain and n):
            self.again.append(c)  # more may wait, and no event will say so (server.proc.poller)
        self.table.received(c, data, self.now)  # a view of scratch: made into codes at once
        self.read_now.append(c)
        if c.received - c.consumed < c.lowat and not drain and n < want:
            self.nothing_new(c)  # woken below its mark: the window is (nearly) full

    def nothing_new(self, c: Client) -> None:
        """``c`` was reported readable below its low-water mark (with no byte
        not seen before, or with too few to reach the mark): Linux does
        that when the receive window is (nearly) full, and an edge-triggered
        socket is not reported again, so room is made now.  The frames left
        in it once queued are taken out; with none, the incomplete frame is
        taken out too (not exact until it is queued)."""
        if c.pushed_to > c.consumed:
            self.take_out(c, c.pushed_to)
        elif c.received > c.consumed:
            self.take_out(c, c.received)
        else:
            return
        self.read_now.append(c)  # its low-water mark is set again

    def consume(self) -> None:
        """Take out of the sockets the frames that are now queued, once a
        socket holds ``room_for_queued`` of them (one call for many reads), and
        set each socket read from this turn to wake at new bytes: at the end
        of an incomplete frame, else at any (edge-triggered, old bytes do
        not wake it)."""
        table = self.table
        clients = table.clients
        for c, end in table.pushed.items():
            if clients.get(c.conn) is not c:  # closed meanwhile
                continue
            if end < 0:
                self.take_out(c, c.received)
            else:
                c.pushed_to = end
                if end - c.consumed >= c.defer:
                    self.take_out(c, end)
                    if not c.defer:  # the first time; then once a second (take_out_queued)
                        c.defer = self.room_for_queued(c)
        touched = [*table.pushed, *self.read_now]
        table.pushed.clear()
        self.read_now.clear()
        for c in touched:
            if c.lowat == 1 and not c.framing.buffered:
                continue  # the usual case: no incomplete frame, and it wakes at any byte
            if clients.get(c.conn) is not c:
                continue
            want = self.wake_mark(c)
            if want > self.peek_window(c) and c.pushed_to > c.consumed:
                self.take_out(c, c.pushed_to)  # make room, exactly
                want = self.wake_mark(c)
            if want > self.peek_window(c):
                self.take_out(c, c.received)  # too much to leave there: not exact now
                want = 1
            if want != c.lowat and table.is_open(c):
                c.lowat = want
                try:
                    c.handle.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, want)
                except OSError as err:
                    table.close(c, f"setting SO_RCVLOWAT failed: {err.strerror or err}")

    def room_for_queued(self, c: Client) -> int:
        """How many bytes of queued frames may wait in the socket of ``c``
        until the next take-out: ``DEFER_BYTES``, or a quarter of its
        receive buffer if that is less (Linux counts the buffer in the
        memory its packets take, up to a few times their bytes, and the
        window must stay open for the next frames); 0 without SO_PEEK_OFF
        (each peek would copy them again).  Measured at the first take-out,
        then once a second, as the kernel grows and shrinks the buffer."""
        if not self.peek_off:
            return 0
        try:
            size = c.handle.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        except OSError:
            return 0
        return int(min(DEFER_BYTES, size // 4))

    @staticmethod
    def wake_mark(c: Client) -> int:
        """The ``SO_RCVLOWAT`` for ``c``: its unread bytes up to where its
        incomplete frame ends; 1 when it has none (any new byte)."""
        if not c.framing.buffered:
            return 1
        return c.received - c.consumed + c.framing.missing()

    def take_out_queued(self) -> None:
        """Take the queued frames out of every socket that still holds some:
        a quiet client's bytes do not stay in the kernel (once a second).
        Their measure of room is taken again meanwhile."""
        for c in list(self.table.clients.values()):
            if c.pushed_to > c.consumed and self.table.is_open(c):
                self.take_out(c, c.pushed_to)
                c.defer = self.room_for_queued(c)
                self.read_now.append(c)
        if self.read_now:
            self.consume()

    def take_again(self) -> list[Client]:
        """The clients whose last read filled the buffer and that may be read now."""
        again, self.again = self.again, []
        return [c for c in again if c.events & EVENT_READ and self.table.is_open(c)]

    def peek_window(self, c: Client) -> int:
        """How many bytes of ``c`` may wait unread in its socket.  The kernel
        lets the client send only up to the low-water mark once it exceeds
        the receive buffer (it clamps the window there), so a frame whose
        length is unknown (a line) may not grow far past it."""
        if not self.peek_off:
            return SMALL_PEEK
        return PEEK_WINDOW if c.framing.name == "length" else LINE_PEEK

    def take_out(self, c: Client, end: int) -> None:
        """Discard the socket's unread bytes up to stream offset ``end``.
        If some stay (an incomplete frame), its mark is to be set again
        even if it is the same number (``consume`` does): setting it makes
        Linux look at the socket again, and report it if the window is
        still full, as a socket woken below its mark is not reported twice."""
        why = self._discard(c, end)
        if why:
            self.table.close(c, why)
        elif c.received > c.consumed:
            c.lowat = 0

    def _discard(self, c: Client, end: int) -> str:
        """``take_out`` without closing ``c``: why it stopped short, or ""."""
        while c.consumed < end:
            want = min(end - c.consumed, len(self.scratch))
            try:
                n = c.handle.recv_into(self.scratch, want, socket.MSG_TRUNC)  # no copy
            except OSError as err:
                return f"receive failed: {err.strerror or err}"
            if not n:
                return f"{end - c.consumed} bytes seen in its socket are gone"
            c.consumed += n
        return ""

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
            sock.setblocking(False)
            c = self.table.open(peer, self.now)
            if c is None:  # full: say so and close
                with contextlib.suppress(OSError):
                    sock.send(self.table.full_reply)
                sock.close()
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.peek_off:
                self.peek_off = peek_from_offset(sock)
            c.handle = sock
            c.anchor = self.anchors.read
            host, port = (addr[0], addr[1]) if isinstance(addr, tuple) else ("", 0)
            self.streams.opened(c.slot, c.conn, c.anchor, (host, port), time.time())
            self.notices.opened(c.conn, sock)  # before it is served
            self.update_interest(c)

    def _release(self, c: Client, reason: str) -> None:
        """The table closed ``c``: let go of its socket."""
        if c.events:
            self.sel.unregister(c.handle)
            c.events = 0
        self.anchors.unpin(c.conn)  # its output is gone with it: it holds the head no more
        self.notices.closed(c.conn)
        # the bytes read and left in it (queued, mostly): closed with unread
        # bytes, the kernel would reset the connection, not close it
        self._discard(c, c.received)  # closing anyway: a failure changes nothing
        c.handle.close()
