"""The connect process's socket calls: each turns the outcome of one system
call on a client socket, or on the listener, into a call on the client
table (``server.core.clients``).  ``ConnectProcess`` (``server.proc.connect``)
is built on this; nothing here decides anything about a client.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import socket
import struct
import termios
from typing import Any

from ..core.clients import Client, ClientTable
from ..core.streams import StreamLedger
from .keeper import Notices

log = logging.getLogger("server.connect")

RECV_SIZE = 256 * 1024
ACCEPTS_PER_TURN = 64


def send_queue(c: Client) -> int:
    """Bytes in the client's socket send queue, not yet acknowledged by the
    peer (SIOCOUTQ, which Linux numbers as TIOCOUTQ); 0 if unknown."""
    try:
        raw = fcntl.ioctl(c.handle.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except (OSError, ValueError):
        return 0
    return int(struct.unpack("i", raw)[0])


class ClientSockets:
    table: ClientTable
    listener: socket.socket
    notices: Notices
    streams: StreamLedger
    sel: Any
    now: float
    written: int

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

    def read(self, c: Client) -> None:
        try:
            data = c.handle.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:
            self.table.close(c, f"receive failed: {err.strerror or err}")
            return
        self.table.received(c, data, self.now)

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
            c.handle = sock
            self.streams.opened(c.slot, c.conn, 0)
            self.notices.opened(c.conn, sock)  # before it is served
            self.update_interest(c)

    def _release(self, c: Client, reason: str) -> None:
        """The table closed ``c``: let go of its socket."""
        if c.events:
            self.sel.unregister(c.handle)
            c.events = 0
        self.notices.closed(c.conn)
        c.handle.close()
