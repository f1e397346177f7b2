"""A bus endpoint: a named inbox in shared memory, and sends to any endpoint.

::

    bus = Bus.open("1.0.0.1", config="bus.toml")  # attach or create this endpoint's inbox
    bus.send("2.0.0.1", b"payload", timeout=None)  # True once it is in shared memory here
    bus.recv(timeout=None) -> (source, payload) | None
    bus.send_many("2.0.0.1", payloads, timeout=None) -> int  # how many, in order, one lock
    bus.recv_many(max_messages=256, timeout=None) -> [(source, payload), ...]
    bus.fileno()                                  # + prepare_wait()/finish_wait(): selectors

Each endpoint has one ``SharedQueue`` inbox on its host (the route table of
``server.core.busconfig`` says which host), keyed by ``config.inbox_key``:
any number of senders write into it, the endpoint reads it.  A send to an
endpoint on this host goes straight into the target's inbox (made if it is
not there yet: the message waits for its reader).  A send to an endpoint on
another host goes into this host's *outbox* for that host, which the
host's relay forwards; it stays in shared memory until the other relay
has applied it (until the relay, ``python -m server relay``, runs, they
wait there).  Either way ``send`` returns
True once the message is in shared memory on this host: a process killed
after that loses nothing.  Messages carry their source and target
(``server.core.buslink``: ``envelope``).

Order: one sender's messages to one target arrive in the order sent.
"""

from __future__ import annotations

import contextlib

from ..core.busconfig import BusConfig, load_bus_config
from ..core.buslink import envelope, open_envelope
from .sharedqueue import SharedQueue


class Bus:
    """One endpoint (see the module docstring)."""

    @classmethod
    def open(cls, address: str, config: str | BusConfig = "bus.toml") -> Bus:
        cfg = load_bus_config(config) if isinstance(config, str) else config
        return cls(address, cfg)

    def __init__(self, address: str, config: BusConfig) -> None:
        self.address = address
        self.config = config
        self.host = config.host_of(address).name
        self.inbox = SharedQueue.open(config.inbox_key(address), config.inbox_bytes)
        self._queues: dict[int, SharedQueue] = {}  # the inboxes and outboxes we send to
        self._routes: dict[str, tuple[SharedQueue, bytes]] = {}  # target -> queue, header
        # the header (both addresses) of the last message received, and its source
        self._last: tuple[bytes, str] = (b"", "")

    def send(self, target: str, payload: bytes, timeout: float | None = None) -> bool:
        """Put one message for ``target`` into shared memory on this host:
        its inbox if it lives here, else the outbox to its host.  Waits
        while that queue is full; False at the timeout."""
        route = self._routes.get(target) or self._route(target)
        return route[0].push(route[1] + payload, timeout)

    def send_many(self, target: str, payloads: list[bytes], timeout: float | None = None) -> int:
        """``send`` for several messages to one target, in one lock round
        trip where they fit: how many were queued, in order (all of them
        unless the timeout came first)."""
        queue, head = self._routes.get(target) or self._route(target)
        return queue.push_many([head + p for p in payloads], timeout)

    def recv(self, timeout: float | None = None) -> tuple[str, bytes] | None:
        """The next message for us: (source address, payload); None at the timeout."""
        code = self.inbox.pop(timeout)
        if code is None:
            return None
        return self._open(code)

    def recv_many(
        self, max_messages: int = 256, timeout: float | None = None
    ) -> list[tuple[str, bytes]]:
        """Up to ``max_messages`` messages in one lock round trip: waits for
        the first; [] at the timeout."""
        out = []
        header, source = self._last
        cut = len(header)
        for code in self.inbox.pop_many(max_messages, timeout):
            if cut and code.startswith(header):  # the last one's source again: the hot path
                out.append((source, code[cut:]))
            else:
                out.append(self._open(code))
                header, source = self._last
                cut = len(header)
        return out

    def _open(self, code: bytes) -> tuple[str, bytes]:
        """(source, payload) of a message from our inbox, checked; its
        header (both addresses) is kept for the next one."""
        source, target, payload = open_envelope(code)  # names what is wrong, if anything
        self._last = (code[: len(code) - len(payload)], source)
        return source, payload

    def _route(self, target: str) -> tuple[SharedQueue, bytes]:
        host = self.config.host_of(target).name
        cfg = self.config
        key = cfg.inbox_key(target) if host == self.host else cfg.outbox_key(self.host, host)
        queue = self._queues.get(key)
        if queue is None:
            queue = self.inbox if key == self.inbox.key else SharedQueue.open(key, cfg.inbox_bytes)
            self._queues[key] = queue
        route = self._routes[target] = (queue, envelope(self.address, target, b""))
        return route

    # -- a selectors loop ----------------------------------------------------------------
    def fileno(self) -> int:
        return self.inbox.fileno()

    def prepare_wait(self) -> bool:
        return self.inbox.prepare_wait()

    def finish_wait(self) -> None:
        self.inbox.finish_wait()

    # -- closing -----------------------------------------------------------------------------
    def close(self) -> None:
        for queue in self._queues.values():
            if queue is not self.inbox:
                with contextlib.suppress(Exception):
                    queue.close()
        self._queues.clear()
        self.inbox.close()

    def __enter__(self) -> Bus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Bus endpoint {self.address!r} on host {self.host!r}, {len(self.inbox)} waiting>"
