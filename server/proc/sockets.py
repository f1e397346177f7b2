"""The connect process's socket calls: each turns the outcome of one system
call on a client socket, or on the listener, into a call on the client
table (``server.core.clients``).  ``ConnectProcess`` (``server.proc.connect``)
is built on this; nothing here decides anything about a client.

Reading leaves the bytes in the socket (``MSG_PEEK``, from the socket's
``SO_PEEK_OFF``, so each byte is seen once); ``consume`` takes them out
once their frames are queued (``MSG_TRUNC``: discarded, not copied), so a
``kill -9`` between the two loses nothing (``server.core.streams``).  The
bytes of an incomplete frame stay unread, so ``SO_RCVLOWAT`` is set to
where the frame ends (a line: one byte more): the socket is readable again
when that arrives, not at every turn.  A frame that does not fit is
taken out as it comes, as before, and that connection is then not exact
across a crash until the frame is queued: one past ``peek_window`` (or,
on a kernel without ``SO_PEEK_OFF`` for TCP, before Linux 6.10, past
``SMALL_PEEK``), or one the kernel's receive window cannot hold (it then
reports the socket readable below the mark: the client cannot send more
until something is read).
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

    def read(self, c: Client) -> None:
        seen = c.received - c.consumed
        buf = self.scratch  # recv(256 KiB) would allocate that much per call
        try:
            if self.peek_off:
                data = buf[: c.handle.recv_into(buf, self.recv_size, socket.MSG_PEEK)]
            else:
                n = c.handle.recv_into(buf, seen + self.recv_size, socket.MSG_PEEK)
                if n and n == seen:
                    raise BlockingIOError  # nothing new: see below
                data = buf[seen:n]
        except BlockingIOError:
            if seen:  # readable below its low-water mark: the kernel's window is full
                self.take_out(c, c.received)  # so take them out (not exact until queued)
                self.read_now.append(c)
            return
        except InterruptedError:
            return
        except OSError as err:
            self.table.close(c, f"receive failed: {err.strerror or err}")
            return
        self.table.received(c, data, self.now)  # a view of scratch: made into codes at once
        self.read_now.append(c)

    def consume(self) -> None:
        """Take out of the sockets the bytes whose frames are now queued,
        and set each socket read from this turn to wake at new bytes."""
        table = self.table
        for c, end in table.pushed.items():
            if table.is_open(c):
                self.take_out(c, c.received if end < 0 else end)
        touched = [*table.pushed, *self.read_now]
        table.pushed.clear()
        self.read_now.clear()
        for c in touched:
            if not table.is_open(c):
                continue
            unread = c.received - c.consumed
            want = unread + c.framing.missing()  # readable again when the frame is complete
            if want > self.peek_window(c):
                self.take_out(c, c.received)  # too much to leave there: not exact now
                want = 1
            if want != c.lowat:
                c.lowat = want
                try:
                    c.handle.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, want)
                except OSError as err:
                    table.close(c, f"setting SO_RCVLOWAT failed: {err.strerror or err}")

    def peek_window(self, c: Client) -> int:
        """How many bytes of ``c`` may wait unread in its socket.  The kernel
        lets the client send only up to the low-water mark once it exceeds
        the receive buffer (it clamps the window there), so a frame whose
        length is unknown (a line) may not grow far past it."""
        if not self.peek_off:
            return SMALL_PEEK
        return PEEK_WINDOW if c.framing.name == "length" else LINE_PEEK

    def take_out(self, c: Client, end: int) -> None:
        """Discard the socket's unread bytes up to stream offset ``end``."""
        while c.consumed < end:
            want = min(end - c.consumed, len(self.scratch))
            try:
                n = c.handle.recv_into(self.scratch, want, socket.MSG_TRUNC)  # no copy
            except OSError as err:
                self.table.close(c, f"receive failed: {err.strerror or err}")
                return
            if not n:
                self.table.close(c, f"{end - c.consumed} bytes seen in its socket are gone")
                return
            c.consumed += n

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
        c.handle.close()
