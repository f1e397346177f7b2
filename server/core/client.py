"""One client of the connect process, as its table keeps it (pure).

``server.core.clients.ClientTable`` owns these and every decision about
them; ``handle`` and ``events`` belong to the shell (``server.proc.connect``:
the socket, and the interest registered for it), and the table never reads
them.  ``Counters`` is where the table counts: the status board, or a
test's stand-in.
"""

from __future__ import annotations

from typing import Any, Protocol

from .codes import Kind, encode
from .framing import Framing
from .handover import ClientState


class Counters(Protocol):
    """Where the table counts (the status board, or a test's stand-in)."""

    def add(self, counter: str, n: int = 1) -> None: ...

    def set(self, counter: str, value: int) -> None: ...


class Client:
    """One client.  ``handle`` and ``events`` belong to the shell (its
    socket, and the interest it registered); the table never reads them."""

    __slots__ = (
        "conn",
        "slot",
        "peer",
        "framing",
        "out",
        "last_input",
        "last_output",
        "sent",
        "sent_seen",
        "received",
        "consumed",
        "pushed_to",
        "defer",
        "delivered",
        "anchor",
        "unkept",
        "skip_out",
        "lowat",
        "queued",
        "closing",
        "frame_started",
        "prefix",
        "handle",
        "events",
    )

    def __init__(self, conn: int, slot: int, peer: str, framing: Framing, now: float) -> None:
        self.conn = conn
        self.slot = slot
        self.peer = peer
        self.framing = framing
        self.out = bytearray()  # reply bytes not yet taken by the socket
        self.last_input = now
        self.last_output = now  # when the peer last took reply bytes (seen at a tick)
        self.sent = 0  # reply bytes its socket took, in all
        self.sent_seen = 0  # ``sent`` at the last tick
        self.queued = 0  # bytes in its socket's send queue (not yet acknowledged) then
        self.received = 0  # bytes seen in its socket (read with MSG_PEEK), in all
        self.consumed = 0  # of those, bytes taken out of the socket (queued whole frames)
        self.pushed_to = 0  # bytes of whole frames in the inbound queue (some still in the socket)
        self.defer = 0  # queued bytes that may wait in its socket (its receive buffer's measure)
        self.delivered = 0  # reply bytes appended to ``out``, in all (the stream ledger's)
        self.anchor = 0  # the outbound position of its ledger anchor (server.core.outflow)
        self.unkept = False  # its output waits in memory only (a slow reader: not anchored)
        self.skip_out = 0  # re-delivered reply bytes its kernel took already (after a crash)
        self.lowat = 1  # its SO_RCVLOWAT (unread bytes before it is readable; 0: set it again)
        self.closing = ""  # the app asked to close: the reason, once the output is out
        self.frame_started = 0.0  # when the incomplete frame in its framer began
        self.prefix = encode(Kind.MESSAGE, conn)  # + frame records = its inbound code
        self.handle: Any = None
        self.events = 0

    def state(self) -> ClientState:
        """This client as a handover carries it (``server.core.handover``)."""
        return ClientState(
            self.conn,
            self.slot,
            self.peer,
            self.closing,
            self.framing.pending(),
            bytes(self.out),
            self.last_input,
            self.last_output,
            self.frame_started,
        )

    def __repr__(self) -> str:
        return f"<Client {self.conn:#x} {self.peer} {len(self.out)} bytes out>"
