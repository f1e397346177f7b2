"""The connect process's epoll: ``selectors``' interface, and client sockets
edge-triggered.

``selectors.EpollSelector`` reports a readable socket at every turn for as
long as it holds unread bytes (level-triggered).  The connect process
leaves bytes in its sockets on purpose: the frames of a read are taken out
only once their codes are queued, and then not at once but a few reads
later, in one call (``server.proc.sockets``), because that second system
call per read was the largest cost the connect process had that a plain
server has not.  So a client socket is registered with ``EPOLLET``: it is
reported when new bytes arrive (Linux wakes an edge-triggered waiter at
every arrival, and ``SO_RCVLOWAT`` still holds the wake-up back until a
frame is complete), not while old ones wait.

What edge-triggering asks of the caller: a read that filled its buffer
may have left new bytes behind, and nothing will report them, and a
hang-up (``HANGUP`` in the events: the peer closed or reset, or the socket
failed) is reported once, maybe with bytes before it; so the caller reads
such a socket again, without waiting, until it says that it holds nothing
more, or its end, or its error (``ClientSockets.again``).
Registering a socket, or changing its events, reports it at once if it is
ready then, so a socket whose reading was paused is looked at again when it
resumes.

Other file objects (the listener, the doorbell, control sockets) stay
level-triggered, as in ``selectors``.
"""

from __future__ import annotations

import contextlib
import math
import select
import selectors
from typing import Any

EVENT_READ = selectors.EVENT_READ
EVENT_WRITE = selectors.EVENT_WRITE
HANGUP = 4  # with EVENT_READ: the peer closed or reset, or the socket failed
_NOT_OUT = ~select.EPOLLOUT  # anything but "writable" (in, hang-up, error) reads
_NOT_IN = ~select.EPOLLIN
_HANGUPS = select.EPOLLHUP | select.EPOLLERR | select.EPOLLRDHUP


def _fd_of(fileobj: Any) -> int:
    fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
    if fd < 0:
        raise ValueError(f"{fileobj!r} has no file descriptor (closed?)")
    return int(fd)


class Poller:
    """An epoll set: ``register(fileobj, events, data, edge=False)``,
    ``modify``, ``unregister``, ``select(timeout) -> [(key, events)]``."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._keys: dict[int, selectors.SelectorKey] = {}
        self._edge: set[int] = set()

    def _bits(self, fd: int, events: int) -> int:
        edge = fd in self._edge
        bits = select.EPOLLET if edge else 0
        if events & EVENT_READ:
            bits |= select.EPOLLIN | (select.EPOLLRDHUP if edge else 0)
        if events & EVENT_WRITE:
            bits |= select.EPOLLOUT
        return bits

    def _lookup(self, fileobj: Any) -> int:
        """The descriptor ``fileobj`` was registered with (also once it is closed)."""
        try:
            return _fd_of(fileobj)
        except ValueError:
            for key in self._keys.values():
                if key.fileobj is fileobj:
                    return key.fd
            raise KeyError(f"{fileobj!r} is not registered") from None

    def register(
        self, fileobj: Any, events: int, data: Any = None, edge: bool = False
    ) -> selectors.SelectorKey:
        if not events or events & ~(EVENT_READ | EVENT_WRITE):
            raise ValueError(f"invalid events: {events!r}")
        fd = _fd_of(fileobj)
        if fd in self._keys:
            raise KeyError(f"{fileobj!r} (descriptor {fd}) is already registered")
        if edge:
            self._edge.add(fd)
        try:
            self._epoll.register(fd, self._bits(fd, events))
        except BaseException:
            self._edge.discard(fd)
            raise
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._keys[fd] = key
        return key

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        fd = self._lookup(fileobj)
        try:
            key = self._keys[fd]
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None
        if not events or events & ~(EVENT_READ | EVENT_WRITE):
            raise ValueError(f"invalid events: {events!r}")
        if events != key.events:
            self._epoll.modify(fd, self._bits(fd, events))
        key = key._replace(events=events, data=data)
        self._keys[fd] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        fd = self._lookup(fileobj)
        try:
            key = self._keys.pop(fd)
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None
        self._edge.discard(fd)
        with contextlib.suppress(OSError):  # closed already: the kernel forgot it
            self._epoll.unregister(fd)
        return key

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        """The ready file objects and their events (``EVENT_READ`` also for a
        hang-up or an error, and then ``HANGUP`` too: reading says what
        happened)."""
        if timeout is None:
            wait = -1.0
        elif timeout <= 0:
            wait = 0.0
        else:
            wait = math.ceil(timeout * 1e3) * 1e-3  # epoll counts milliseconds: not 0 early
        ready = []
        keys = self._keys
        for fd, bits in self._epoll.poll(wait, max(len(keys), 1)):
            key = keys.get(fd)
            if key is None:
                continue
            events = (EVENT_READ if bits & _NOT_OUT else 0) | (EVENT_WRITE if bits & _NOT_IN else 0)
            events &= key.events
            if events:
                ready.append((key, events | HANGUP if bits & _HANGUPS else events))
        return ready

    def close(self) -> None:
        self._epoll.close()
        self._keys.clear()
        self._edge.clear()

    def __enter__(self) -> Poller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
