"""The connect process's outbound side: codes from the outbound queue to the
clients' sockets, and the head moved on only past codes every client has
handed to its kernel (the rule and its reasons: ``server.core.outflow``).
A part of ``ConnectProcess`` (``server.proc.connect``).

``choose_timeout`` decides how long the loop may sleep: not while replies
wait; under a light load, not for a short while after requests went to
the logic process either (the loop polls for their replies: the spin of
``server.core.idle``, which saves a wake-up each way); else until the
outbound doorbell rings.

After a crash the codes from the head are delivered again: ``unborn``
holds the clients that must not get the first of them (they were written
before the crash, see ``server.core.streams``), and ``deliver`` reads
only up to the next such client's first code at a time.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from ..core.clients import Client, ClientTable
from ..core.idle import Spinner
from ..core.outflow import ReplyAnchors
from ..core.streams import StreamLedger
from ..ipc.codequeue import GRACE
from .common import TICK

log = logging.getLogger("server.connect")

OUT_CODES_PER_TURN = 4096
ROOM_POLL = 2e-3  # while the inbound queue is full
REPLY_SPIN = 100e-6  # after handing requests over: watch for their replies this long
LIGHT = 1  # a turn with at most this many events: a light load, where a spin pays


class ReplyFlow:
    outbound: Any
    table: ClientTable
    streams: StreamLedger
    anchors: ReplyAnchors
    unborn: dict[int, int]
    progress: Any
    flush: Callable[[Client], None]  # server.proc.sockets (after this class in the MRO)
    inbound: Any
    stopping: bool
    asleep: bool
    spinner: Spinner
    handed: int  # the inbound tail when we last looked: it moved, so replies are coming
    spin_until: float  # perf_counter() until which the loop polls for replies (0: not)
    again: list[Client]  # server.proc.sockets
    busy: bool  # the last turn had more than LIGHT events: the loop is never idle for long

    def choose_timeout(self) -> float:
        """How long the loop may sleep in ``select``: 0 while replies wait;
        for a short while after handing requests over, 0 too (the loop goes
        on polling its sockets and the queue for the replies, the spin of
        ``server.core.idle``); then it falls asleep on the doorbell."""
        if self.outbound.ring.tail != self.anchors.read:
            if self.spin_until:
                self.spin_until = 0.0
                self.spinner.spun(True)
            return 0.0
        if self.again:  # sockets to read again (server.proc.poller)
            return 0.0
        if self.table.backlog:
            return ROOM_POLL
        if self.stopping:
            return 0.05
        if self.asleep:
            return TICK
        tail = self.inbound.ring.tail
        if tail != self.handed:  # requests went over: their replies are coming
            self.handed = tail
            if not self.spin_until and not self.busy:  # busy: it would only cost the others
                budget = self.spinner.budget()
                if budget:
                    self.spin_until = time.perf_counter() + budget
        if self.spin_until:
            if time.perf_counter() < self.spin_until:
                os.sched_yield()  # two cores: give way to the logic process if it waits for one
                return 0.0
            self.spin_until = 0.0
            self.spinner.spun(False)
        if self.outbound.prepare_wait(self.anchors.read):
            self.asleep = True
            return GRACE
        return 0.0

    def deliver(self) -> None:
        """Deliver the codes past ``anchors.read`` and write them out; the
        head moves on only past codes whose bytes every client handed to
        its kernel (``server.core.outflow``)."""
        anchors, table = self.anchors, self.table
        unborn: frozenset[int] = frozenset()
        max_bytes = 1 << 20
        if self.unborn:  # delivering again after a crash: stop at each client's first code
            later = {conn: at for conn, at in self.unborn.items() if at > anchors.read}
            self.unborn = later
            if later:
                unborn = frozenset(later)
                max_bytes = min(later.values()) - anchors.read
        # views of the ring, no copy: deliver appends them to the outputs now
        codes, end = self.outbound.peek_views(OUT_CODES_PER_TURN, max_bytes, anchors.read)
        if codes:
            dirty = table.deliver(codes, unborn)
            anchors.delivered(end, len(codes))
            for c in dirty:
                if table.is_open(c):
                    self.flush(c)  # anchors it at ``end`` if all of it is out
                    if c.out and not c.unkept:
                        anchors.pin(c.conn, c.anchor)
                        self.streams.set_pending(c.slot, len(c.out))
            if anchors.pinned and anchors.behind > anchors.limit:
                self.release_slow()
        if anchors.head != anchors.read:
            moved = anchors.advance()
            if moved is not None:
                self.outbound.commit_head(*moved)
                self.progress[0] += moved[1]

    def reanchor(self, c: Client) -> None:
        """Every reply byte delivered to ``c`` was taken by its kernel."""
        self.streams.anchor(c.slot, c.delivered, self.anchors.read)
        if c.unkept or c.conn in self.anchors.pinned:
            self.anchors.unpin(c.conn)
            self.streams.set_pending(c.slot, 0)
            c.unkept = False
        c.anchor = self.anchors.read

    def release_slow(self, every: bool = False) -> None:
        """Stop holding the head for clients that read their replies slowly
        (or for every pinned client: a handover carries their output)."""
        for conn in list(self.anchors.pinned) if every else self.anchors.overdue():
            self.anchors.unpin(conn)
            c = self.table.clients.get(conn)
            if c is None:
                continue
            self.streams.unanchor(c.slot)
            c.unkept = True
            if not every:
                log.info(
                    "connection %#x from %s reads its replies slowly (%d bytes waiting): they "
                    "are kept in this process only, and a crash of it would close the connection",
                    c.conn,
                    c.peer,
                    len(c.out),
                )
