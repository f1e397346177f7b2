"""The supervisor keeps a duplicate of every client socket (SCM_RIGHTS).

The connect process tells the supervisor, on its control socket (a Unix
``SOCK_SEQPACKET`` pair made for every connect process), about each client
it serves::

    connect -> supervisor   OPEN  + conn id (8 bytes, little-endian), with the socket
                            CLOSE + conn id, when the connection ends
                            TOOK  + count, once a new process has adopted (and
                                  announced with OPEN) the clients handed to it
    supervisor -> connect   HAND  with a socket: on SIGHUP, hand your clients
                            over on it (``server.proc.handover``)

OPEN is sent before the client is served, so the supervisor holds every
connection the connect process holds.  The supervisor closes its
duplicate on CLOSE, so a closed client is never kept half-open, and also
when the connect process dies: a restarted one cannot yet resume a stream
byte-exact, so those clients are closed as before (and the log says how
many).  ``inspect`` shows how many it holds (``descriptors_held``).

The connect process never blocks on a notice: ``Notices`` queues what the
socket does not take now and sends it on a later turn, in order (a lost
CLOSE would keep a client half-open).  If the supervisor is gone, notices
are dropped: the connect process goes on serving and stops when it notices.
"""

from __future__ import annotations

import array
import collections
import logging
import os
import socket

OPEN, CLOSE, HAND, TOOK = b"O", b"X", b"H", b"T"

log = logging.getLogger("server.supervisor")


def recv_fds(sock: socket.socket, size: int, most: int) -> tuple[bytes, list[int]]:
    """One message and its descriptors, without waiting (BlockingIOError if
    none is there).  ``socket.recv_fds`` ignores its ``flags`` before
    Python 3.13, so this calls ``recvmsg`` itself."""
    fds = array.array("i")
    message, ancdata, _flags, _addr = sock.recvmsg(
        size, socket.CMSG_LEN(most * fds.itemsize), socket.MSG_DONTWAIT
    )
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return message, list(fds)


class Notices:
    """The connect process's side: OPEN and CLOSE, queued when need be."""

    def __init__(self, control: socket.socket | None) -> None:
        self.control = control
        self.queue: collections.deque[tuple[bytes, socket.socket | None]] = collections.deque()

    def opened(self, conn: int, sock: socket.socket) -> None:
        self.queue.append((OPEN + conn.to_bytes(8, "little"), sock.dup()))
        self.flush()

    def took(self, count: int) -> None:
        self.queue.append((TOOK + count.to_bytes(8, "little"), None))
        self.flush()

    def closed(self, conn: int) -> None:
        self.queue.append((CLOSE + conn.to_bytes(8, "little"), None))
        self.flush()

    def flush(self) -> None:
        """Send what the socket takes now, in order."""
        queue = self.queue
        while queue and self.control is not None:
            message, sock = queue[0]
            try:
                if sock is None:
                    self.control.send(message, socket.MSG_DONTWAIT)
                else:
                    socket.send_fds(self.control, [message], [sock.fileno()], socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # the supervisor is gone
                self.control = None
            queue.popleft()
            if sock is not None:
                sock.close()
        while queue:  # nobody to tell
            _message, sock = queue.popleft()
            if sock is not None:
                sock.close()


class FdKeeper:
    """The supervisor's duplicates, by connection id."""

    def __init__(self) -> None:
        self.held: dict[int, socket.socket] = {}
        self.owner: dict[int, socket.socket] = {}  # conn -> the control socket it came on
        self.took: set[int] = set()  # control sockets that sent TOOK (by fileno)

    def read(self, control: socket.socket | None) -> bool:
        """Take every notice waiting on ``control``; False once its other
        end is gone (the connect process exited) and nothing is left."""
        if control is None:
            return False
        while True:
            try:
                message, fds = recv_fds(control, 64, 4)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                return False
            if not message and not fds:
                return False
            self._notice(control, message, fds)

    def _notice(self, control: socket.socket, message: bytes, fds: list[int]) -> None:
        kind, conn = message[:1], int.from_bytes(message[1:9], "little")
        if kind == OPEN and len(fds) == 1 and len(message) == 9:
            self._drop(conn)
            self.held[conn] = socket.socket(fileno=fds[0])
            self.owner[conn] = control
            return
        for fd in fds:  # none belongs to anything else
            os.close(fd)
        if kind == CLOSE and len(message) == 9:
            self._drop(conn)
        elif kind == TOOK and len(message) == 9:
            self.took.add(control.fileno())
        else:
            log.warning("ignoring a malformed notice from the connect process: %r", message[:16])

    def _drop(self, conn: int) -> None:
        sock = self.held.pop(conn, None)
        self.owner.pop(conn, None)
        if sock is not None:
            sock.close()

    def close_owned_by(self, control: socket.socket) -> int:
        """Close the duplicates that came on ``control`` and that no other
        process announced since (clients a dead process did not hand over)."""
        conns = [conn for conn, owner in self.owner.items() if owner is control]
        for conn in conns:
            self._drop(conn)
        return len(conns)

    def close_all(self) -> int:
        """Close every duplicate; how many there were."""
        n = len(self.held)
        for sock in self.held.values():
            sock.close()
        self.held.clear()
        self.owner.clear()
        return n
