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
duplicate on CLOSE, so a closed client is never kept half-open.  When the
connect process dies, the supervisor hands its duplicates to the next one
(``resume``: the handover format of ``server.core.handover``, marked
``resume``); that one resumes each connection where the stream ledger and
the kernel say it stands (``server.core.streams.resumable``; the rare one
that cannot be is closed with the reason), and announces what it took
(OPEN each, then TOOK); the supervisor then closes the duplicates nobody
took.  ``inspect`` shows how many it holds (``descriptors_held``).

    connect -> a new supervisor   LISTEN with the listening socket, first,
                                  when one adopts it (``server.proc.adoption``)

The connect process never blocks on a notice: ``Notices`` queues what the
socket does not take now and sends it on a later turn, in order (a lost
CLOSE would keep a client half-open).  If the supervisor is gone, notices
are dropped; a supervisor that adopts the process is sent every client anew.
"""

from __future__ import annotations

import array
import collections
import logging
import os
import socket
import time

from ..core.codes import slot_of
from ..core.handover import ClientState, messages

OPEN, CLOSE, HAND, TOOK = b"O", b"X", b"H", b"T"
LISTEN = b"L"  # connect -> a supervisor that adopts it: the listening socket

log = logging.getLogger("server.supervisor")


def control_pair() -> tuple[socket.socket, socket.socket]:
    """A Unix SOCK_SEQPACKET pair (message boundaries kept): a connect
    process's control socket, or a socket a handover goes over."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


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


def send_fds(sock: socket.socket, message: bytes, fds: list[int]) -> None:
    """Send one message with descriptors without waiting (BlockingIOError
    if the socket is full); ``socket.send_fds`` ignores its flags too."""
    sock.sendmsg(
        [message],
        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))],
        socket.MSG_DONTWAIT,
    )


class Notices:
    """The connect process's side: OPEN and CLOSE, queued when need be."""

    MAX_WAITING_SOCKETS = 1024  # OPENs queued (each holds a descriptor) at most

    def __init__(self, control: socket.socket | None) -> None:
        self.control = control
        self.queue: collections.deque[tuple[bytes, socket.socket | None]] = collections.deque()
        self.waiting_sockets = 0

    def opened(self, conn: int, sock: socket.socket) -> None:
        if self.waiting_sockets >= self.MAX_WAITING_SOCKETS:  # the supervisor reads nothing
            log.warning("the supervisor takes no notices: connection %#x is not kept by it", conn)
            return
        self.waiting_sockets += 1
        self.queue.append((OPEN + conn.to_bytes(8, "little"), sock.dup()))
        self.flush()

    def listening(self, sock: socket.socket) -> None:
        """For a supervisor that adopts us: the listening socket."""
        self.waiting_sockets += 1
        self.queue.append((LISTEN, sock.dup()))
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
                    send_fds(self.control, message, [sock.fileno()])
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # the supervisor is gone
                self.control = None
            queue.popleft()
            if sock is not None:
                sock.close()
                self.waiting_sockets -= 1
        while queue:  # nobody to tell
            _message, sock = queue.popleft()
            if sock is not None:
                sock.close()
                self.waiting_sockets -= 1


class FdKeeper:
    """The supervisor's duplicates, by connection id."""

    def __init__(self) -> None:
        self.held: dict[int, socket.socket] = {}
        self.owner: dict[int, object] = {}  # conn -> the control socket it came on
        self.took: set[int] = set()  # control sockets that sent TOOK (by fileno)
        self.resuming: object | None = None  # the owner of duplicates handed on
        self._resume: collections.deque[tuple[bytes, socket.socket | None]] = collections.deque()
        self._resume_sock: socket.socket | None = None

    # -- handing a dead connect process's clients to the next one ------------------------
    def resume(self) -> socket.socket | None:
        """After the connect process died: the socket to give the next one
        (``--adopt-fd``), on which every held client will be handed to it;
        None if there is none."""
        self.end_resume()
        if not self.held:
            return None
        self.resuming = marker = object()
        states, socks = [], []
        for conn, sock in self.held.items():
            try:
                peer = "{}:{}".format(*sock.getpeername()[:2])
            except OSError:
                peer = "?"
            now = time.monotonic()  # its timeouts start afresh
            states.append(ClientState(conn, slot_of(conn), peer, last_input=now, last_output=now))
            socks.append(sock)
            self.owner[conn] = marker
        ours, theirs = control_pair()
        ours.setblocking(False)
        self._resume_sock = ours
        self._resume.extend(
            (m, None if i is None else socks[i]) for m, i in messages(states, [], resume=True)
        )
        return theirs

    def flush_resume(self) -> None:
        sock = self._resume_sock
        while self._resume and sock is not None:
            message, client = self._resume[0]
            try:
                if client is None:
                    sock.send(message)
                else:
                    send_fds(sock, message, [client.fileno()])
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # the new process is gone: its death starts this again
                self._resume.clear()
                return
            self._resume.popleft()

    def settle_resume(self, control: socket.socket | None) -> int:
        """Once the new process said TOOK on ``control``: close what it did
        not take; how many."""
        if self.resuming is None or control is None or control.fileno() not in self.took:
            return 0
        self.took.discard(control.fileno())
        n = self.close_owned_by(self.resuming)
        self.end_resume()
        return n

    def end_resume(self) -> None:
        self._resume.clear()
        if self._resume_sock is not None:
            self._resume_sock.close()
            self._resume_sock = None
        self.resuming = None

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

    def close_owned_by(self, control: object) -> int:
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
        self.end_resume()
        return n
