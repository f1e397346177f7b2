"""Where each client's byte streams stand, so a restarted connect process
resumes them byte-exact (pure: the ledger in shared memory, and the
decisions made from it and the kernel's counters).

A client's TCP connection outlives a killed connect process when another
process holds a duplicate of its socket (the supervisor does).  The new
connect process then needs, per connection, two numbers that the dead one
cannot tell it any more, and gets them from this ledger and the kernel:

Inbound (client -> server), counted from the start of the connection:

    pushed    bytes turned into codes that are in the inbound queue (this
              ledger: committed by the queue's tail, see below)
    consumed  bytes the process has taken out of the socket: the kernel's
              ``tcpi_bytes_received`` minus ``SIOCINQ`` (still unread)

  The connect process takes only *whole frames* out of the socket, and
  only after their code was pushed, so ``consumed <= pushed`` always and
  the first ``pushed - consumed`` unread bytes are frames already queued:
  the new process reads and drops exactly those (``inbound_skip``).

Outbound (server -> client):

    written   bytes of the connection's replies in codes before the
              outbound queue's head (this ledger: committed by the head)
    taken     bytes the kernel accepted from the process: the kernel's
              ``tcpi_bytes_acked`` plus ``SIOCOUTQ`` (not yet acknowledged)

  The connect process advances the outbound head past a code only once the
  kernel took all of its bytes, so the codes from the head on hold every
  byte not yet taken; re-delivered from the head, the first
  ``taken - written`` bytes of this connection's share are dropped
  (``outbound_skip``).

Committing a count with a queue position.  A count is valid together with
a position of its queue (the inbound tail, the outbound head) that another
store publishes.  Each count is three words, ``prev``, ``tag``, ``cur``;
to move it to ``new``, to be valid once the queue reaches position ``at``::

    1. prev = the count valid now      (a copy: nothing changes yet)
    2. tag  = at                       from here, ``prev`` is read ...
    3. cur  = new                      ... until the queue reaches ``at``
    4. (the caller publishes the queue position ``at``)

    value(position) = cur if tag <= position else prev

A crash between any two stores reads the count that matches the queue's
position: the old one before step 4, the new one after it.  Positions only
grow (u64 byte counters of the ring), so ``tag <= position`` never goes
back.

Layout: ``max_conns`` entries of 8 u64 words (64 bytes, one cache line)::

    word  field      meaning
    ----  ---------  -----------------------------------------------------
       0  conn       the connection id this entry belongs to (0: none)
       1  in_prev    \\
       2  in_tag      > pushed, committed by the inbound queue's tail
       3  in_cur     /
       4  out_prev   \\
       5  out_tag     > written, committed by the outbound queue's head
       6  out_cur    /
       7  born_at    the outbound read position when the connection was
                     accepted: codes before it are not for this connection

Only the connect process writes.  Everything read back is checked: an
entry for another connection id, a count that goes backwards, or kernel
counters that contradict it give a ``Resume`` with a reason to close that
one connection (never a guess that would corrupt its stream).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .placed import InSegment, slot_words

KIND = "StreamLedger"
WORDS = 8
_CONN, _IN, _OUT, _BORN = 0, 1, 4, 7
INBOUND, OUTBOUND = _IN, _OUT  # the two sides, for ``commit`` and ``value``


@dataclasses.dataclass(frozen=True)
class Resume:
    """What to do with one stream of a connection after a restart: drop
    ``skip`` bytes, or close it (``problem`` says why)."""

    skip: int = 0
    problem: str = ""

    @property
    def ok(self) -> bool:
        return not self.problem


def inbound_skip(pushed: int, received: int, unread: int) -> Resume:
    """Unread bytes that are already in queued codes (see the docstring)."""
    if not 0 <= unread <= received:
        return Resume(problem=f"the kernel counts {unread} unread of {received} received bytes")
    consumed = received - unread
    skip = pushed - consumed
    if skip < 0:
        return Resume(
            problem=f"{-skip} bytes were taken from the socket but never queued "
            f"(pushed {pushed}, consumed {consumed}): the stream has a hole"
        )
    if skip > unread:
        return Resume(
            problem=f"{pushed} bytes are queued but the client sent only {received}: "
            f"the ledger is not this connection's"
        )
    return Resume(skip=skip)


def outbound_skip(written: int, acked: int, unsent: int) -> Resume:
    """Bytes of the re-delivered output that the kernel already took."""
    if acked < 0 or unsent < 0:
        return Resume(problem=f"impossible kernel counters (acked {acked}, queued {unsent})")
    taken = acked + unsent
    skip = taken - written
    if skip < 0:
        return Resume(
            problem=f"the ledger says {written} reply bytes were written, the kernel took "
            f"only {taken}: they would be lost"
        )
    return Resume(skip=skip)


def resumable(
    ledger: StreamLedger,
    slot: int,
    conn: int,
    positions: tuple[int, int],
    kernel: tuple[int, int, int, int],
) -> str:
    """Why connection ``conn`` cannot be served on as it is after its
    connect process died ("" if it can).  ``positions``: the inbound tail
    and the outbound head; ``kernel``: received, unread, acked, unsent.

    Served on means nothing is lost or repeated as it stands: every byte
    read from the socket was queued, and every reply byte taken out of the
    outbound queue was handed to the socket.  A frame read in part, or
    replies not yet written, when the process died are gone with it: that
    connection is closed (a later part of this work keeps those too)."""
    in_tail, out_head = positions
    received, unread, acked, unsent = kernel
    ledger.settle(slot, INBOUND, in_tail)
    ledger.settle(slot, OUTBOUND, out_head)
    if ledger.conn(slot) != conn:
        return f"the stream ledger holds connection {ledger.conn(slot):#x}, not this one"
    r = inbound_skip(ledger.value(slot, INBOUND, in_tail), received, unread)
    if r.ok and r.skip:
        r = Resume(problem=f"{r.skip} bytes were queued but are still unread")
    if not r.ok:
        return f"inbound: {r.problem}"
    r = outbound_skip(ledger.value(slot, OUTBOUND, out_head), acked, unsent)
    if r.ok and r.skip:
        r = Resume(problem=f"the kernel took {r.skip} reply bytes more than were written")
    return "" if r.ok else f"outbound: {r.problem}"


def trim(chunks: list[bytes], skip: int) -> list[bytes]:
    """``chunks`` (one connection's re-delivered output, in order) without
    their first ``skip`` bytes."""
    out = []
    for chunk in chunks:
        if skip >= len(chunk):
            skip -= len(chunk)
        elif skip:
            out.append(chunk[skip:])
            skip = 0
        else:
            out.append(chunk)
    return out


def region_size(max_conns: int) -> int:
    return 8 * WORDS * max_conns


class StreamLedger(InSegment):
    """Per connection slot: the committed stream counts (see the docstring)."""

    KIND = KIND

    def __init__(self, region: memoryview, max_conns: int, *, init: bool) -> None:
        self.max_conns = max_conns
        self._w = slot_words(region, max_conns, WORDS, "a stream ledger", init=init)

    # -- a placed kind (server.core.placed) ------------------------------------------
    @classmethod
    def region_size(cls, param: int = 0) -> int:
        return region_size(param)

    @classmethod
    def param_of(cls, size: int) -> int:
        return size // (8 * WORDS)

    @classmethod
    def on_region(
        cls, region: memoryview, param: int, *, init: bool, observer: bool
    ) -> StreamLedger:
        return cls(region, param, init=init)

    def release(self) -> None:
        self._w.release()

    def report(self, name: str) -> dict[str, Any]:
        """Per connection id: the bytes it sent that were queued, and the
        reply bytes taken for it (the latest counts, as an observer sees)."""
        w = self._w
        streams = {}
        for slot in range(self.max_conns):
            base = slot * WORDS
            if w[base + _CONN]:
                streams[int(w[base + _CONN])] = {
                    "bytes_in": int(w[base + _IN + 2]),
                    "bytes_out": int(w[base + _OUT + 2]),
                }
        return {"streams": streams}

    # -- writes (the connect process) ---------------------------------------------------
    def opened(self, slot: int, conn: int, born_at: int) -> None:
        """A new connection took ``slot``: both counts start at 0."""
        base = self._base(slot)
        w = self._w
        w[base + _CONN] = 0  # while the entry is rewritten it is nobody's
        for i in range(1, WORDS):
            w[base + i] = 0
        w[base + _BORN] = born_at
        w[base + _CONN] = conn

    def commit(self, slot: int, side: int, new: int, at: int, position: int) -> None:
        """Make ``new`` the count of ``side`` (INBOUND or OUTBOUND) once its
        queue reaches ``at``; ``position`` is where that queue is now.  The
        caller publishes ``at`` before it commits this count again (so it
        commits only what will be published: what fits in the queue)."""
        w = self._w
        for index, value in self.stores(slot, side, new, at, position):
            w[index] = value

    def settle(self, slot: int, side: int, position: int) -> None:
        """A new process starts with its queue at ``position``: a commit the
        dead one made but never published is dropped (``cur`` back to
        ``prev`` first, so a crash in between reads the same)."""
        i = self._base(slot) + side
        w = self._w
        if w[i + 1] > position:
            w[i + 2] = w[i]
            w[i + 1] = 0

    # -- reads ---------------------------------------------------------------------------
    def conn(self, slot: int) -> int:
        return int(self._w[self._base(slot) + _CONN])

    def born_at(self, slot: int) -> int:
        return int(self._w[self._base(slot) + _BORN])

    def value(self, slot: int, side: int, position: int) -> int:
        """The count of ``side`` that goes with its queue at ``position``."""
        return self._value(self._base(slot) + side, position)

    def _value(self, i: int, position: int) -> int:
        w = self._w
        return int(w[i + 2] if w[i + 1] <= position else w[i])

    def _base(self, slot: int) -> int:
        if not 0 <= slot < self.max_conns:
            raise IndexError(f"slot {slot} out of range 0..{self.max_conns - 1}")
        return slot * WORDS

    def stores(
        self, slot: int, side: int, new: int, at: int, position: int
    ) -> list[tuple[int, int]]:
        """The (word index, value) stores of ``commit``, in order (a test
        applies a prefix of them to stand for a crash between two)::

            prev = the count valid now; tag = at; cur = new
        """
        i = self._base(slot) + side
        if self._w[i + 1] > position:
            raise RuntimeError(
                f"slot {slot}: the previous count (valid at {self._w[i + 1]}) was never "
                f"published (the queue is at {position}); commit only what is pushed"
            )
        if at < position:
            raise ValueError(f"a count is committed for a later position, not {at} < {position}")
        return [(i, self._value(i, position)), (i + 1, at), (i + 2, new)]

    def store(self, index: int, value: int) -> None:
        self._w[index] = value
