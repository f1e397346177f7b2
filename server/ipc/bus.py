"""A bus endpoint: a named inbox in shared memory, and sends to any endpoint.

::

    bus = Bus.open("1.0.0.1", config="bus.toml")  # attach or create this endpoint's inbox
    bus.send("2.0.0.1", b"payload", timeout=None)  # True once it is in shared memory here
    bus.recv(timeout=None) -> (source, payload) | None
    bus.fileno()                                  # + prepare_wait()/finish_wait(): selectors

Each endpoint has one ``SharedQueue`` inbox on its host (the route table of
``server.core.busconfig`` says which host), keyed by ``config.inbox_key``:
any number of senders write into it, the endpoint reads it.  A send to an
endpoint on this host goes straight into the target's inbox (made if it is
not there yet: the message waits for its reader).  A send to an endpoint on
another host goes into this host's *outbox* for that host, which the
host's relay forwards; it stays in shared memory until the other relay
has applied it.  (The relay, ``python -m server relay``, is being built:
until it runs, messages for other hosts wait in their outbox.)  Either way ``send`` returns
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

    def send(self, target: str, payload: bytes, timeout: float | None = None) -> bool:
        """Put one message for ``target`` into shared memory on this host:
        its inbox if it lives here, else the outbox to its host.  Waits
        while that queue is full; False at the timeout."""
        return self._queue_for(target).push(envelope(self.address, target, payload), timeout)

    def recv(self, timeout: float | None = None) -> tuple[str, bytes] | None:
        """The next message for us: (source address, payload); None at the timeout."""
        code = self.inbox.pop(timeout)
        if code is None:
            return None
        source, _target, payload = open_envelope(code)
        return source, payload

    def _queue_for(self, target: str) -> SharedQueue:
        host = self.config.host_of(target).name
        cfg = self.config
        key = cfg.inbox_key(target) if host == self.host else cfg.outbox_key(self.host, host)
        queue = self._queues.get(key)
        if queue is None:
            queue = self.inbox if key == self.inbox.key else SharedQueue.open(key, cfg.inbox_bytes)
            self._queues[key] = queue
        return queue

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
