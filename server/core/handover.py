"""A connect process hands its clients to its successor (pure: messages in,
state out).

On SIGHUP the supervisor starts a new connect process next to the old one
and gives it the other end of the old one's control socket (a Unix
``SOCK_SEQPACKET`` pair: message boundaries are kept, and a socket rides
along with a message as SCM_RIGHTS).  The new process sends READY; the old
one stops reading clients and popping replies, and sends, in order::

    HELLO   {"version": 1, "clients": N, "codes": M}
    CLIENT  {"conn", "slot", "peer", "closing", "partial": n, "out": n,
             "last_input", "last_output", "frame_started"}   + its socket
    DATA    raw bytes: that client's incomplete frame (``partial`` bytes),
            then its unwritten replies (``out`` bytes), in chunks
    ...     (one CLIENT and its DATA per client)
    CODE    {"size": n}, then DATA: an inbound code not yet in the queue
    ...
    END

Each message is one type byte and its payload (JSON for all but DATA).
Times are ``time.monotonic()`` values: CLOCK_MONOTONIC is one clock for
every process of the machine.  The old process then lets go of its
doorbell and exits 0; nothing it holds is closed, no CLOSED code is sent.

Order is kept both ways: what the old process left in the queues stays
there, and the new one writes a client's handed-over output before any
reply it pops, and pushes the handed-over codes before any it reads.

The reader trusts nothing: a message before HELLO or after END, an unknown
type, a CLIENT without exactly one socket, DATA beyond what was announced,
sizes over the limits, a slot out of range or a connection id that does
not match its slot raise ``HandoverError``.  A stream cut short (the old
process died) is not ``complete``: the clients received whole are adopted,
the sockets of the others are given back by ``leftover()`` to be closed,
and their connections are lost as after a crash.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any, NoReturn

from ..errors import HandoverError
from .codes import slot_of

READY, HELLO, CLIENT, DATA, CODE, END = b"R", b"H", b"C", b"D", b"K", b"E"
VERSION = 1
CHUNK = 32 * 1024  # DATA bytes per message (well under a SEQPACKET socket's buffer)


@dataclasses.dataclass(frozen=True)
class ClientState:
    """One client as a connect process hands it over."""

    conn: int
    slot: int
    peer: str
    closing: str = ""
    partial: bytes = b""  # an incomplete frame read from its socket
    out: bytes = b""  # replies not yet taken by its socket
    last_input: float = 0.0
    last_output: float = 0.0
    frame_started: float = 0.0


@dataclasses.dataclass(frozen=True)
class Limits:
    """What a handover may hold, from the configuration of the receiver."""

    max_conns: int
    max_partial: int  # an incomplete frame is never longer than a frame
    max_out: int
    max_code: int


def messages(
    clients: list[ClientState], codes: list[bytes], *, resume: bool = False
) -> Iterator[tuple[bytes, int | None]]:
    """The handover, message by message: (message, index of the client whose
    socket goes with it, or None).  ``resume``: the supervisor hands over
    the sockets of a connect process that died; each stream must then be
    checked against the stream ledger before it is served
    (``server.core.streams``)."""
    hello = {"version": VERSION, "clients": len(clients), "codes": len(codes), "resume": resume}
    yield HELLO + _json(hello), None
    for i, c in enumerate(clients):
        head = dataclasses.asdict(c)
        head["partial"], head["out"] = len(c.partial), len(c.out)
        yield CLIENT + _json(head), i
        yield from _chunks(c.partial + c.out)
    for code in codes:
        yield CODE + _json({"size": len(code)}), None
        yield from _chunks(code)
    yield END, None


def _json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _chunks(blob: bytes) -> Iterator[tuple[bytes, None]]:
    for start in range(0, len(blob), CHUNK):
        yield DATA + blob[start : start + CHUNK], None


class HandoverReader:
    """Rebuilds a handover from its messages (see the module docstring)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.clients: list[tuple[ClientState, int]] = []  # received whole, with their sockets
        self.codes: list[bytes] = []
        self.announced: dict[str, int] = {}
        self.complete = False
        self.resume = False  # from a dead process, by the supervisor: check each stream
        self._index = 0
        self._head: dict[str, Any] | None = None  # the CLIENT or CODE whose DATA comes
        self._fd: int | None = None  # the socket of the CLIENT whose DATA comes
        self._spare: list[int] = []
        self._need = 0
        self._data = bytearray()

    def feed(self, message: bytes, fds: list[int]) -> None:
        """One message and the descriptors that came with it.  Whatever
        happens, a descriptor not adopted is in ``leftover()``."""
        self._index += 1
        self._spare += fds
        kind, payload = message[:1], message[1:]
        if self.complete:
            self._fail("a message after END", kind)
        if not self.announced and kind != HELLO:
            self._fail("the first message is not HELLO", kind)
        if kind != CLIENT and fds:
            self._fail(f"{len(fds)} descriptor(s) with a {kind!r} message", len(fds))
        if kind == HELLO:
            self._hello(payload)
        elif kind == CLIENT:
            self._expect_data_done()
            if len(fds) != 1:
                self._fail(f"a CLIENT message with {len(fds)} sockets, not one", len(fds))
            self._client(self._load(payload))
            self._spare.remove(fds[0])
            self._fd = fds[0]
            self._settle()
        elif kind == CODE:
            self._expect_data_done()
            size = self._bound("code size", self._load(payload).get("size"), self.limits.max_code)
            self._head, self._need = {"code": True}, size
            self._settle()
        elif kind == DATA:
            if self._head is None or not payload or len(payload) > self._need - len(self._data):
                self._fail("DATA beyond what was announced", len(payload))
            self._data += payload
            self._settle()
        elif kind == END:
            self._expect_data_done()
            got = (len(self.clients), len(self.codes))
            if got != (self.announced["clients"], self.announced["codes"]):
                self._fail("END before everything HELLO announced", got)
            self.complete = True
        else:
            self._fail("an unknown message type", kind)

    def leftover(self) -> list[int]:
        """Sockets received but not adopted (a client cut short, or sent
        where none belongs): the shell closes them."""
        left = self._spare + ([] if self._fd is None else [self._fd])
        self._spare, self._fd = [], None
        return left

    # -- pieces -------------------------------------------------------------------------
    def _hello(self, payload: bytes) -> None:
        if self.announced:
            self._fail("a second HELLO", payload)
        head = self._load(payload)
        if head.get("version") != VERSION:
            self._fail(f"handover version {head.get('version')!r} (this code reads {VERSION})", 0)
        self._bound("client count", head.get("clients"), self.limits.max_conns)
        self._bound("code count", head.get("codes"), 1 << 24)
        self.announced = {"clients": head["clients"], "codes": head["codes"]}
        self.resume = head.get("resume") is True

    def _client(self, head: dict[str, Any]) -> None:
        lim = self.limits
        try:
            conn, slot, peer = int(head["conn"]), int(head["slot"]), str(head["peer"])
            closing = str(head["closing"])
            times = [float(head[k]) for k in ("last_input", "last_output", "frame_started")]
            partial, out = head["partial"], head["out"]
        except (KeyError, TypeError, ValueError) as err:
            self._fail(f"a CLIENT message without a valid {err}", head)
        self._bound("slot", slot, lim.max_conns - 1)
        if slot_of(conn) != slot:
            self._fail(f"connection {conn:#x} does not belong to slot {slot}", conn)
        self._bound("partial frame", partial, lim.max_partial)
        self._bound("unwritten output", out, lim.max_out)
        self._head = dict(conn=conn, slot=slot, peer=peer, closing=closing, partial=partial)
        self._head.update(zip(("last_input", "last_output", "frame_started"), times, strict=True))
        self._need = partial + out

    def _settle(self) -> None:
        """The DATA of the current CLIENT or CODE is all there: keep it."""
        if self._head is None or len(self._data) < self._need:
            return
        head, data = self._head, bytes(self._data)
        self._head, self._need, self._data = None, 0, bytearray()
        if head.pop("code", False):
            self.codes.append(data)
            return
        cut = head.pop("partial")
        state = ClientState(**head, partial=data[:cut], out=data[cut:])
        assert self._fd is not None
        self.clients.append((state, self._fd))
        self._fd = None

    def _expect_data_done(self) -> None:
        if self._head is not None:
            self._fail("a new message before the DATA announced", self._need - len(self._data))

    def _load(self, payload: bytes) -> dict[str, Any]:
        try:
            head = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            head = None
        if not isinstance(head, dict):
            self._fail("a header that is not a JSON object", payload[:80])
        return head

    def _bound(self, what: str, value: Any, most: int) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= most:
            self._fail(f"{what} {value!r} out of range 0..{most}", value)
        return value

    def _fail(self, what: str, found: object) -> NoReturn:
        raise HandoverError(
            f"handover message #{self._index}: {what}; the clients not yet received are lost",
            index=self._index,
            found=found,
        )
