"""The logic process on the bus: ``run --bus bus.toml --endpoint chat@h1``.

``Room`` opens the endpoint's inbox and the queues of the other endpoints
of its room (``server.core.bridge``: same name before ``@``): the outbox
to each other host that has one, the inbox of one that lives here.  The
stepper calls it with each step's broadcasts (``room(key, payloads)``),
and the logic loop runs ``room.bridge`` (a ``BridgeStep``) for what the
room sends.  The rules that make both exactly once are in the core
module; here are only the queues:

* a message is pushed with a mark in this server's mark slot
  (``BusConfig.sender_slot``); what was last pushed into each queue is
  read from it once and then remembered, so a redone step finds its
  messages queued and skips them;
* a full queue makes ``room`` return False: the step waits (the logic
  loop backs off), nothing is dropped; a broadcast too large to ever fit
  in a queue of the bus is logged and not sent to the room.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
from typing import Any

from ..core.app import Outbox
from ..core.bridge import PARTS, BridgeStep, pack, remote_mark, split
from ..core.busconfig import load_bus_config
from ..core.buslink import envelope
from ..core.config import ServerConfig
from ..core.framing import Framing
from ..errors import ConfigError
from ..ipc.codequeue import CodeQueue
from ..ipc.segment import ServerSegment
from ..ipc.sharedqueue import SharedQueue
from .logic import crash_after_step

log = logging.getLogger("server.logic")

# Test-only fault injection, as the logic process's STCP_CRASH_AFTER_PUBLISHING_STEP:
# SIGKILL after publishing room step N, before taking its messages from the inbox.
ROOM_CRASH_ENV = "STCP_CRASH_AFTER_ROOM_STEP"
# ... and after queuing the room message of step N, before publishing its replies.
SEND_CRASH_ENV = "STCP_CRASH_AFTER_ROOM_SEND"


def check_sizes(cfg: ServerConfig, inbox_bytes: int, path: str) -> None:
    """A step's broadcasts (at most --queue-bytes) must fit in ``PARTS``
    bus messages of a quarter of an inbox each."""
    if cfg.queue_bytes > PARTS * (inbox_bytes // 4):
        raise ConfigError(
            f"--queue-bytes {cfg.queue_bytes} is more than {PARTS // 4} times inbox_bytes "
            f"{inbox_bytes} of {path}: one step's broadcasts might not fit in the bus messages "
            f"it may take; raise inbox_bytes or lower --queue-bytes",
            option="--queue-bytes",
            value=cfg.queue_bytes,
        )


class Room:
    def __init__(self, cfg: ServerConfig, seg: ServerSegment, app: Any, framing: Framing) -> None:
        bus = load_bus_config(cfg.bus)
        self.address = cfg.endpoint
        self.slot = bus.sender_slot(self.address)
        self.host = bus.host_of(self.address).name
        self.inbox = SharedQueue.open(bus.inbox_key(self.address), bus.inbox_bytes)
        self.capacity = bus.inbox_bytes
        check_sizes(cfg, bus.inbox_bytes, bus.path)
        self.queues: dict[int, SharedQueue] = {}
        self.targets: list[tuple[str, SharedQueue, int]] = []  # peer, its queue, index in it
        for peer in bus.room_peers(self.address):
            there = bus.host_of(peer).name
            key = bus.inbox_key(peer) if there == self.host else bus.outbox_key(self.host, there)
            if key not in self.queues:
                self.queues[key] = SharedQueue.open(key, bus.inbox_bytes)
            i = sum(1 for _, q, _ in self.targets if q.key == key)
            self.targets.append((peer, self.queues[key], i))
        self.last = {key: q.mark(self.slot) for key, q in self.queues.items()}
        self.sends = 0
        self.stalled = False  # a queue of the room was full: said once
        self.after_send = crash_after_step(int(os.environ.get(SEND_CRASH_ENV) or 0))
        outbox = Outbox(
            limit=seg.outbound.ring.capacity,
            encode_frame=framing.encode,
            frame_header=framing.header_of,
        )
        self.bridge = BridgeStep(
            self.inbox,
            seg.outbound.ring,
            seg.busjournal,
            outbox,
            on_remote=getattr(app, "on_remote", None),
            on_error=log.error,
            after_publish=crash_after_step(int(os.environ.get(ROOM_CRASH_ENV) or 0)),
        )
        peers = ", ".join(p for p, _, _ in self.targets) or "none (only this one in bus.toml)"
        log.info(
            "on the bus as %s (host %s); the others of its room: %s", self.address, self.host, peers
        )

    def __call__(self, key: int, payloads: list[bytes]) -> bool:
        """Queue a step's broadcasts for every peer (see the module docstring);
        False if a queue is full (call again with the same arguments)."""
        most = self.capacity // 4
        sendable = [p for p in payloads if len(p) + 4 <= most]
        if len(sendable) != len(payloads):
            log.error(
                "a broadcast of more than %d bytes cannot cross the bus (inbox_bytes %d): "
                "only this server's users get it",
                most - 4,
                self.capacity,
            )
        for part, run in enumerate(split(sendable, most)):
            packed = pack(run)
            for peer, queue, i in self.targets:
                mark = remote_mark(key, i, part)
                if mark <= self.last[queue.key]:
                    continue  # queued before (a redone step)
                code = envelope(self.address, peer, packed)
                if queue.push_many([code], timeout=0, mark=(self.slot, mark)) != 1:
                    if not self.stalled:
                        self.stalled = True
                        log.warning(
                            "the queue to %s is full (is the relay of host %s running?): "
                            "this server's steps wait for it; nothing is dropped",
                            peer,
                            self.host,
                        )
                    return False
                self.last[queue.key] = mark
        if self.stalled:
            self.stalled = False
            log.info("the room's queues take messages again")
        self.sends += 1
        if self.after_send is not None:
            self.after_send(self.sends)
        return True

    def wait(self, inbound: CodeQueue, timeout: float) -> None:
        """Sleep until a code comes inbound or a message from the room, at
        most ``timeout`` seconds."""
        if not inbound.prepare_wait():
            return
        try:
            if not self.inbox.prepare_wait():
                return
            try:
                with selectors.DefaultSelector() as sel:
                    sel.register(inbound.fileno(), selectors.EVENT_READ)
                    sel.register(self.inbox.fileno(), selectors.EVENT_READ)
                    sel.select(timeout)
            finally:
                self.inbox.finish_wait()
        finally:
            inbound.finish_wait()

    def close(self) -> None:
        for queue in self.queues.values():
            with contextlib.suppress(Exception):
                queue.close()
        self.inbox.close()
