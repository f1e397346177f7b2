"""What the kernel counts of a TCP connection's two byte streams (Linux).

A socket's counters belong to the connection, not to a process: every
descriptor of it, in any process, reads the same numbers.  A connect
process that took over a killed one's sockets compares them with the
stream ledger (``server.core.streams``) to resume each stream byte-exact::

    received   TCP_INFO tcpi_bytes_received: data bytes that arrived, in order
    unread     SIOCINQ (FIONREAD): of those, still in the receive queue
    acked      TCP_INFO tcpi_bytes_acked: data bytes the peer acknowledged
    unsent     SIOCOUTQ (TIOCOUTQ): bytes in the send queue, not yet acknowledged

so ``received - unread`` is what processes took out of the socket, and
``acked + unsent`` what they handed to it.  This holds for an *accepted*
socket, the only kind the server resumes: on the side that connected,
``acked`` also counts its SYN (one more), and a FIN it sent would count too.  ``struct tcp_info`` has had
both 64-bit counters at these offsets since Linux 4.1 (bytes_acked at 120,
bytes_received at 128); a kernel that returns a shorter struct is refused
with the length it gave.
"""

from __future__ import annotations

import dataclasses
import fcntl
import socket
import struct
import termios

from ..errors import ServerError

_TCP_INFO_LEN = 232
_ACKED, _RECEIVED = 120, 128
_INT = struct.Struct("i")
_U64 = struct.Struct("Q")


@dataclasses.dataclass(frozen=True)
class StreamCounters:
    received: int
    unread: int
    acked: int
    unsent: int

    @property
    def consumed(self) -> int:
        """Bytes processes took out of the receive queue."""
        return self.received - self.unread

    @property
    def taken(self) -> int:
        """Bytes processes handed to the send queue."""
        return self.acked + self.unsent


def counters(sock: socket.socket) -> StreamCounters:
    """The kernel's counters of ``sock``'s connection (see the docstring)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
    if len(info) < _RECEIVED + 8:
        raise ServerError(
            f"this kernel's TCP_INFO is {len(info)} bytes, without tcpi_bytes_received "
            f"(needs Linux 4.1 or later)"
        )
    fd = sock.fileno()
    unread = _INT.unpack(fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
    unsent = _INT.unpack(fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    return StreamCounters(
        received=_U64.unpack_from(info, _RECEIVED)[0],
        unread=unread,
        acked=_U64.unpack_from(info, _ACKED)[0],
        unsent=unsent,
    )
