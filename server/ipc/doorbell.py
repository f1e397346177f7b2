"""A doorbell: how a producer wakes a consumer that sleeps, without polling.

The consumer binds a Unix datagram socket in Linux's abstract namespace and
sleeps in ``select``/``selectors`` on its file descriptor; the producer sends
one byte to that address.  Abstract addresses leave no file behind, and the
kernel frees the address when the consumer's socket closes, also when the
consumer is killed: a restarted consumer simply binds it again.

A ring is idempotent: a poke that finds the socket buffer full (EAGAIN) or no
one listening (ECONNREFUSED) is dropped, because the consumer re-checks its
queue after every wake-up and before every sleep.  A poke from a stranger
only causes a spurious wake-up, never a lost or injected code.
"""

from __future__ import annotations

import os
import socket

from ..errors import DoorbellInUse


def doorbell_address(key: int | None, name: str) -> bytes:
    """The abstract address of queue ``name`` in segment ``key``.  A plain
    buffer (key None) gets one unique to this process and queue name."""
    owner = f"k{key & 0xFFFFFFFF:08x}" if key is not None else f"p{os.getpid()}"
    return f"\0stcp-{os.geteuid()}-{owner}-{name}".encode()


class Doorbell:
    def __init__(self, address: bytes) -> None:
        self.address = address
        self._listener: socket.socket | None = None
        self._sender: socket.socket | None = None

    # -- consumer side -------------------------------------------------------
    def listen(self) -> None:
        if self._listener is not None:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        try:
            sock.bind(self.address)
        except OSError as err:
            sock.close()
            raise DoorbellInUse(
                f"doorbell {self.address[1:].decode()!r} is taken ({err.strerror}): is another "
                f"consumer of this queue running?",
                address=self.address,
            ) from None
        self._listener = sock

    def fileno(self) -> int:
        """The descriptor to wait on (binds the address on first use)."""
        self.listen()
        assert self._listener is not None
        return self._listener.fileno()

    def drain(self) -> int:
        """Swallow every pending poke; returns how many there were."""
        sock = self._listener
        if sock is None:
            return 0
        count = 0
        while True:
            try:
                sock.recv(64)
            except (BlockingIOError, InterruptedError):
                return count
            count += 1

    # -- producer side ---------------------------------------------------------
    def ring(self) -> bool:
        """Poke the consumer; False if nobody listens or a poke is pending."""
        sock = self._sender
        if sock is None:
            sock = self._sender = socket.socket(
                socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
            )
            sock.setblocking(False)
        try:
            sock.sendto(b"!", self.address)
        except (BlockingIOError, ConnectionRefusedError, FileNotFoundError, InterruptedError):
            return False
        return True

    def close(self) -> None:
        for sock in (self._listener, self._sender):
            if sock is not None:
                sock.close()
        self._listener = self._sender = None
