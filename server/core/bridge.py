"""A server on the bus: its broadcasts reach the other servers of its room (pure core).

``python -m server run --bus bus.toml --endpoint chat@h1`` makes the logic
process a bus endpoint.  Its *room* is every other endpoint of the route
table whose address has the same part before ``@`` (``chat@h2``,
``chat@h3``...).  Every ``conn.broadcast`` then also goes to the room, and
what the room sends is broadcast to this server's users.  Both directions
are exactly once across a ``kill -9`` of the logic process, as the steps
of ``server.core.stepper`` are:

**Out.**  A step's broadcasts for the room travel as *one* bus message per
peer (``pack``), pushed into the peer's queue (its outbox on this host, or
its inbox if it lives here) *before* the step's own replies are published,
with a mark (``server.core.sharedring``): ``remote_mark(step_key, i, part)``.  The
step key is where the step ends in the inbound stream (``in_head``; for one
request of a careful step, ``head + request + 1``): it grows with every
step, and a step that is redone after a crash has the same key.  So a redo
whose message is already queued finds its mark there and skips it; a redo
whose message was not queued pushes it.  ``i`` (< 32) numbers the peers
sharing that queue, so each keeps its own increasing numbers; ``part``
(< 32) numbers the messages of a step too large for one (``split``).

**In.**  ``BridgeStep`` takes the messages of the endpoint's inbox like
the stepper takes inbound codes: peek, broadcast each payload to every
local user (the app's ``on_remote(source, payload)`` may reword or drop
it), and publish through its own ``BusJournal``::

    codes, P = inbox.peek()            nothing taken yet
    replies = broadcasts of them
    journal.record(T, P, n)            T = outbound tail after the replies
    outbound.push_many(replies)
    inbox.commit(P)
    recovery: outbound.tail == T and inbox head < P  ->  inbox.commit(P)

Both journals (the stepper's and this one) record the outbound tail they
publish to; only the last step of either can be unfinished after a crash,
and each recovery checks its own queue's position, so they never finish
each other's step.

Layout of ``BusJournal`` (u64 words; only the logic process writes)::

    word  field     meaning
    ----  --------  ----------------------------------------------
       0  magic     b"BUSJRNL1"
       1  out_tail  T of the last recorded step
       2  in_end    P: the inbox position after its messages
       3  in_count  n: how many messages
       4  steps     steps published, ever (for inspect)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from ..errors import BadCode, CodeTooLarge
from .buslink import open_envelope
from .codering import CodeRing
from .codes import NO_CONN
from .placed import InSegment, magic_words
from .ring import RECORD_HEADER

MAGIC = int.from_bytes(b"BUSJRNL1", "little")
REGION_SIZE = 64
PEERS_PER_QUEUE = 32
PARTS = 32  # a step's broadcasts for one peer, split into at most this many messages
_MAGIC, _OUT_TAIL, _IN_END, _IN_COUNT, _STEPS = range(5)
BATCH = 256  # messages per step


def room_of(address: str) -> str:
    """The room of an endpoint: its address up to ``@`` (all of it without one)."""
    return address.split("@", 1)[0]


def remote_mark(step_key: int, i: int, part: int = 0) -> int:
    """The mark of part ``part`` of the message for the ``i``-th peer in one
    queue, for the step ``step_key``: increasing in that order."""
    if not 0 <= i < PEERS_PER_QUEUE:
        raise ValueError(f"at most {PEERS_PER_QUEUE} peers of a room share one queue, not {i + 1}")
    if not 0 <= part < PARTS:
        raise ValueError(f"a step's room message has at most {PARTS} parts, not {part + 1}")
    return (step_key * PEERS_PER_QUEUE + i) * PARTS + part


def split(payloads: list[bytes], most: int) -> list[list[bytes]]:
    """``payloads`` in runs of at most ``most`` packed bytes (a larger one alone)."""
    runs: list[list[bytes]] = [[]]
    size = 0
    for p in payloads:
        if runs[-1] and size + 4 + len(p) > most:
            runs.append([])
            size = 0
        runs[-1].append(p)
        size += 4 + len(p)
    return runs if runs[0] else []


def pack(payloads: list[bytes]) -> bytes:
    """Several broadcasts as one bus payload: u32 length + bytes, each."""
    return b"".join(len(p).to_bytes(4, "little") + p for p in payloads)


def unpack(data: bytes) -> list[bytes]:
    """The broadcasts of one bus payload; ``BadCode`` if it does not parse."""
    out, at, end = [], 0, len(data)
    while at < end:
        if end - at < 4:
            raise BadCode(
                f"a room message ends inside a length ({end - at} bytes left)",
                field="room message",
                found=end - at,
                expected="u32 length",
            )
        n = int.from_bytes(data[at : at + 4], "little")
        if n > end - at - 4:
            raise BadCode(
                f"a room message claims {n} bytes with {end - at - 4} left",
                field="room message",
                found=n,
                expected=f"<= {end - at - 4}",
            )
        out.append(bytes(data[at + 4 : at + 4 + n]))
        at += 4 + n
    return out


class BusJournal(InSegment):
    KIND = "BusJournal"
    SIZE = REGION_SIZE

    def __init__(self, region: memoryview, *, init: bool) -> None:
        self._w = magic_words(
            region, REGION_SIZE, MAGIC, "bus journal", "busjournal.magic", init=init
        )

    @classmethod
    def on_region(cls, region: memoryview, param: int, *, init: bool, observer: bool) -> BusJournal:
        return cls(region, init=init)

    def release(self) -> None:
        self._w.release()

    def report(self, name: str) -> dict[str, Any]:
        return {"room_steps": self._w[_STEPS]}

    def record(self, out_tail: int, in_end: int, count: int) -> None:
        w = self._w
        w[_OUT_TAIL] = out_tail  # first, as in the step journal
        w[_IN_COUNT] = count
        w[_IN_END] = in_end

    def succeeded(self) -> None:
        self._w[_STEPS] += 1

    def unfinished(self, out_tail: int, in_head: int, in_tail: int) -> int | None:
        """The inbox position to commit, if the last step published its
        replies (``out_tail`` is the one it recorded) but did not take its
        messages; else None."""
        w = self._w
        if out_tail == w[_OUT_TAIL] and in_head < w[_IN_END] <= in_tail:
            return int(w[_IN_END])
        return None


class Inbox(Protocol):
    """What ``BridgeStep`` needs of the endpoint's inbox (a ``SharedQueue``)."""

    def peek(
        self, max_codes: int = ..., start: int | None = ..., max_bytes: int = ...
    ) -> tuple[list[bytes], int]: ...

    def commit(self, end: int) -> int: ...

    def positions(self) -> tuple[int, int]: ...


class BridgeStep:
    """The room's messages -> broadcasts to this server's users, exactly once.

    ``step()`` returns how many messages it took, 0 if none was there, or
    ``BLOCKED`` while its replies wait for room in the outbound queue."""

    BLOCKED = -1  # as LogicStepper.BLOCKED

    def __init__(
        self,
        inbox: Inbox,
        outbound: CodeRing,
        journal: BusJournal,
        outbox: Any,  # a server.core.app.Outbox: frames the payloads
        on_remote: Callable[[str, bytes], bytes | None] | None = None,
        on_error: Callable[[str], None] | None = None,
        after_publish: Callable[[int], None] | None = None,
    ) -> None:
        self.inbox = inbox
        # Called with the step number between publishing a step's replies and
        # taking its messages: the process shell's fault injection.
        self.after_publish = after_publish
        self.steps = 0
        self.outbound = outbound
        self.journal = journal
        self.outbox = outbox
        self.on_remote = on_remote
        self.on_error = on_error or (lambda text: None)
        self.held: tuple[list[bytes], int, int, int] | None = None
        self.errors = 0
        self.soft_limit = outbound.capacity // 4

    def recover(self) -> int:
        """Finish a step that published its replies but did not take its messages."""
        head, tail = self.inbox.positions()
        end = self.journal.unfinished(self.outbound.tail, head, tail)
        if end is None:
            return 0
        count = self.inbox.commit(end)
        self.journal.succeeded()
        return count

    def step(self) -> int:
        if self.held is None:
            codes, end = self.inbox.peek(BATCH)
            if not codes:
                return 0
            outbox = self.outbox
            outbox.clear()
            pos = end - sum(RECORD_HEADER + len(c) for c in codes)  # the first one's
            n = 0
            for code in codes:
                self._broadcast(code)
                pos += RECORD_HEADER + len(code)
                n += 1
                if outbox.size >= self.soft_limit:  # the rest in the next step
                    break
            replies, size = outbox.take()
            self.held = (replies, size, pos, n)
        replies, size, end, n = self.held
        if self.outbound.room() < size:
            return self.BLOCKED
        self.journal.record(self.outbound.tail + size, end, n)
        pushed = self.outbound.push_many(replies)
        if pushed != len(replies):  # cannot happen: the room was checked
            raise RuntimeError(f"published {pushed} of {len(replies)} room replies")
        self.steps += 1
        if self.after_publish is not None:
            self.after_publish(self.steps)
        self.inbox.commit(end)
        self.journal.succeeded()
        self.held = None
        return n

    def _broadcast(self, code: bytes) -> None:
        try:
            source, _target, payload = open_envelope(code)
            lines = unpack(payload)
        except BadCode as err:
            self.errors += 1
            self.on_error(f"skipping a bad room message: {err}")
            return
        for line in lines:
            if self.on_remote is not None:
                try:
                    reworded = self.on_remote(source, line)
                except Exception as err:  # the app's bug: one line lost, not the room
                    self.errors += 1
                    self.on_error(f"the app's on_remote raised {type(err).__name__}: {err}")
                    continue
                if reworded is None:
                    continue
                line = reworded
            try:
                self.outbox.broadcast(line, NO_CONN)
            except CodeTooLarge as err:
                self.errors += 1
                self.on_error(f"skipping a room line of {len(line)} bytes: {err}")
