"""A connect process's table taking over from its predecessor, and handing
over to its successor (pure; a part of ``server.core.clients.ClientTable``).

``restart``: the connections a predecessor left open in the connection
table and did not hand over are lost, and the app is told.  ``adopt``: the
clients and codes a predecessor handed over (``server.core.handover``), or
that the supervisor handed on after it died.  ``export``: what a successor
needs: every client, and of the codes not yet queued only those whose
bytes are no longer in the clients' sockets (``server.core.inflow``).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from typing import TYPE_CHECKING

from ..errors import FrameTooLarge, HandoverError
from .client import Client, Counters
from .codes import Kind, encode
from .conntable import ConnTable
from .framing import make_framing
from .handover import ClientState
from .inflow import Item, handed_over, taken_partial

if TYPE_CHECKING:
    from .config import ServerConfig

log = logging.getLogger("server.connect")


class Succession:
    cfg: ServerConfig
    conns: ConnTable
    counters: Counters
    clients: dict[int, Client]
    free_slots: list[int]
    inq: list[Item]
    backlog: collections.deque[Item]

    def is_open(self, c: Client) -> bool:
        raise NotImplementedError

    def restart(self) -> int:
        """A new connect process starts: the connections its predecessor
        left open in the connection table, and did not hand over, are lost;
        tell the app (CLOSED codes).  Returns how many there were."""
        lost = [conn for conn in self.conns.open_ids() if conn not in self.clients]
        for conn in lost:
            self.conns.close(conn)
            code = encode(Kind.CLOSED, conn, b"connection lost: connect process restarted")
            self.backlog.append((code, None, 0))
        self.counters.set("connections_open", len(self.clients))
        if lost:
            self.counters.add("connections_lost", len(lost))
            log.warning(
                "%d client connection(s) of the previous connect process were lost; "
                "telling the logic process they closed",
                len(lost),
            )
        return len(lost)

    def adopt(self, states: list[ClientState], codes: list[bytes]) -> list[Client]:
        """Before ``restart``: take over the clients and the inbound codes a
        predecessor handed over (``server.core.handover``).  The codes go
        first into the backlog; each client keeps its id and slot, its
        incomplete frame and its unwritten replies."""
        taken = set()
        adopted = []  # nothing changes until every client was checked
        for s in states:
            if not self.conns.is_open(s.conn) or s.slot in taken:
                raise HandoverError(
                    f"connection {s.conn:#x} (slot {s.slot}) is not open in the connection "
                    f"table, or handed over twice",
                    found=s.conn,
                )
            framing = make_framing(self.cfg.framing, self.cfg.max_frame)
            try:
                complete = framing.take(s.partial)
            except FrameTooLarge as err:
                raise HandoverError(f"connection {s.conn:#x}: {err}", found=s.conn) from None
            if complete:
                raise HandoverError(
                    f"connection {s.conn:#x}: its incomplete frame is a complete one", found=s.conn
                )
            c = Client(s.conn, s.slot, s.peer, framing, s.last_input)
            c.last_output, c.frame_started, c.closing = s.last_output, s.frame_started, s.closing
            c.out += s.out
            taken.add(s.slot)
            adopted.append(c)
        self.clients.update((c.conn, c) for c in adopted)
        self.free_slots = [slot for slot in self.free_slots if slot not in taken]
        self.backlog.extend((code, None, 0) for code in codes)
        self.counters.set("connections_open", len(self.clients))
        return adopted

    def export(self) -> tuple[list[ClientState], list[bytes]]:
        """Every client, and the inbound codes not yet queued whose bytes
        are no longer in their sockets, for a successor (it reads the
        others again, and the part of an incomplete frame still there)."""
        states = []
        for c in self.clients.values():
            state = c.state()
            partial = taken_partial(state.partial, c.received, c.consumed)
            states.append(dataclasses.replace(state, partial=partial))

        def still_in_kernel(c: Client, end: int) -> bool:
            return self.is_open(c) and end > c.consumed

        return states, handed_over([*self.backlog, *self.inq], still_in_kernel)
