"""One socket of a bus relay's link (``server.proc.relaylinks``).

``Conn`` is a non-blocking socket with a send buffer: ``send`` queues and
writes what the socket takes, ``flush`` writes more when it is writable
(the relay's selector watches for writability only while bytes wait),
``recv`` returns what is there (b"" if nothing now) and raises
``LinkError`` at the end of the stream.  Bytes moved are counted into a
link board word when one is given.
"""

from __future__ import annotations

import selectors
import socket
from typing import TYPE_CHECKING

from ..core.buslink import LinkError

if TYPE_CHECKING:
    from .relay import Relay


KEEPALIVE = (5, 2, 3)  # idle s, interval s, probes: a peer gone with its link is noticed


class Conn:
    """A non-blocking socket with a send buffer.  TCP keepalive closes a
    connection whose peer vanished while the link was down (no FIN came)."""

    def __init__(
        self, relay: Relay, sock: socket.socket, counter: memoryview | None = None
    ) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        idle, interval, probes = KEEPALIVE
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, probes)
        self.relay = relay
        self.sock = sock
        self.out = bytearray()
        self.fd = sock.fileno()
        self.counter = counter  # a link board word: bytes received (in) or sent (out)

    def recv(self) -> bytes:
        """What the socket has (b"" if nothing now); LinkError at its end."""
        try:
            data = self.sock.recv(262144)
        except (BlockingIOError, InterruptedError):
            return b""
        if not data:
            raise LinkError("the peer closed the connection")
        if self.counter is not None:
            self.counter[0] += len(data)
        return data

    def send(self, data: bytes) -> None:
        if not self.out:  # straight to the socket; only what it does not take waits
            try:
                n = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
            if self.counter is not None:
                self.counter[0] += n
            if n == len(data):
                return
            data = data[n:]
        self.out += data
        self.flush()

    def flush(self) -> None:
        while self.out:
            try:
                n = self.sock.send(self.out)
            except (BlockingIOError, InterruptedError):
                break
            del self.out[:n]
            if self.counter is not None:
                self.counter[0] += n
        self.relay.set_events(self.fd, self.events())

    def events(self) -> int:
        return selectors.EVENT_READ | (selectors.EVENT_WRITE if self.out else 0)
