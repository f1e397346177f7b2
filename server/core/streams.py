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

  The connect process reads with ``MSG_PEEK`` and takes out of the socket
  only *whole frames*, and only after their code was pushed, so
  ``consumed <= pushed`` and the first ``pushed - consumed`` unread bytes
  are frames already queued: the new process drops exactly those
  (``inbound_skip``) and reads on from the first byte not queued.

Outbound (server -> client): the connect process leaves a code in the
outbound queue until every connection it was for has handed all of its
bytes to the kernel.  Per connection the ledger keeps one *anchor*::

    written   W: this connection's reply bytes in codes before position P,
              every one of them taken by the kernel
    position  P: a code boundary of the outbound queue

and the queue's head never passes the anchor of a connection that still has
bytes in codes after it (``server.core.outflow``).  After a crash, codes are
delivered again from the head; a connection drops those before its P and
then the first ``taken - W`` bytes of its share (``outbound_skip``), where
``taken`` is the kernel's ``tcpi_bytes_acked`` plus ``SIOCOUTQ``.  A
connection whose replies waited in process memory too long to hold the head
back (a slow reader) is *unanchored* (P = ``UNANCHORED``): after a crash it
is closed with that reason, never served with a gap.

Committing the inbound count with a queue position.  The count is valid
together with the inbound tail that another store publishes.  It is three
words, ``prev``, ``tag``, ``cur``; to move it to ``new``, to be valid once
the queue reaches position ``at``::

    1. prev = the count valid now      (a copy: nothing changes yet)
    2. tag  = at                       from here, ``prev`` is read ...
    3. cur  = new                      ... until the queue reaches ``at``
    4. (the caller publishes the queue position ``at``)

    value(position) = cur if tag <= position else prev

A crash between any two stores reads the count that matches the queue's
position: the old one before step 4, the new one after it.  Positions only
grow (u64 byte counters of the ring), so ``tag <= position`` never goes
back.  The anchor is a pair (W, P) with two copies and a word that says
which is valid: the other copy is written, then that word flips (one
aligned store), so a crash leaves the old pair or the new one, never a mix.

Layout: ``max_conns`` entries of 16 u64 words (128 bytes)::

    word  field       meaning
    ----  ----------  ----------------------------------------------------
       0  conn        the connection id this entry belongs to (0: none)
       1  in_prev     \\
       2  in_tag       > pushed, committed by the inbound queue's tail
       3  in_cur      /
       4  out_sel     which anchor copy is valid: 0 or 1
       5  out_w0      \\ copy 0: written, position
       6  out_p0      /
       7  out_w1      \\ copy 1
       8  out_p1      /
       9  opened_at   when it was accepted (Unix time, milliseconds)
      10  pending     reply bytes not yet taken by the kernel (for inspect)
      11  port        the peer's port (bit 16 set: an IPv6 address)
   12-13  address     the peer's address, 16 bytes (IPv4: 4, then zeros)
   14-15  (unused)

Only the connect process writes.  Everything read back is checked: an
entry for another connection id, a count that goes backwards, a position
outside the queue, or kernel counters that contradict the ledger give a
reason to close that one connection (never a guess that would corrupt its
stream).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .peers import pack_peer, unpack_peer
from .placed import InSegment, slot_words

KIND = "StreamLedger"
WORDS = 16
UNANCHORED = (1 << 64) - 1  # an anchor position: this connection's output is not kept
_CONN, _IN, _SEL, _PAIRS, _OPENED, _PENDING, _PORT, _ADDR = 0, 1, 4, 5, 9, 10, 11, 12
INBOUND = _IN  # the side ``commit`` and ``value`` keep (the outbound one is an anchor)


@dataclasses.dataclass(frozen=True)
class Resume:
    """What to do with one stream of a connection after a restart: drop
    ``skip`` bytes, or close it (``problem`` says why)."""

    skip: int = 0
    problem: str = ""

    @property
    def ok(self) -> bool:
        return not self.problem


@dataclasses.dataclass(frozen=True)
class Resumed:
    """How a connection goes on after its connect process died: the first
    ``in_skip`` unread bytes are already queued (drop them); outbound codes
    before ``out_from`` are not for it, and of the rest the first
    ``out_skip`` bytes were taken by the kernel already.  ``pushed`` and
    ``written`` are the ledger's counts.  ``problem``: why it cannot."""

    problem: str = ""
    in_skip: int = 0
    out_skip: int = 0
    out_from: int = 0
    pushed: int = 0
    written: int = 0


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
    positions: tuple[int, int, int],
    kernel: tuple[int, int, int, int],
) -> Resumed:
    """How connection ``conn`` goes on after its connect process died.
    ``positions``: the inbound tail, the outbound head and the outbound
    tail; ``kernel``: received, unread, acked, unsent."""
    in_tail, out_head, out_tail = positions
    received, unread, acked, unsent = kernel
    ledger.settle(slot, INBOUND, in_tail)
    if ledger.conn(slot) != conn:
        return Resumed(f"the stream ledger holds connection {ledger.conn(slot):#x}, not this one")
    pushed = ledger.value(slot, INBOUND, in_tail)
    r = inbound_skip(pushed, received, unread)
    if not r.ok:
        return Resumed(f"inbound: {r.problem}")
    written, position = ledger.anchor_of(slot)
    if position == UNANCHORED:
        return Resumed(
            "outbound: its replies waited in the dead process's memory (it read them "
            "slowly, so they were not kept in the queue)"
        )
    if position > out_tail:
        return Resumed(f"outbound: the ledger's position {position} is past the queue ({out_tail})")
    out = outbound_skip(written, acked, unsent)
    if not out.ok:
        return Resumed(f"outbound: {out.problem}")
    return Resumed(
        in_skip=r.skip,
        out_skip=out.skip,
        out_from=max(position, out_head),
        pushed=pushed,
        written=written,
    )


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
        """Per connection id: its peer, when it was accepted, the bytes it
        sent that were queued, the reply bytes written for it and those not
        yet taken by the kernel (the latest counts, as an observer sees)."""
        w = self._w
        streams = {}
        for slot in range(self.max_conns):
            base = slot * WORDS
            if w[base + _CONN]:
                written, position = self.anchor_of(slot)
                streams[int(w[base + _CONN])] = {
                    "peer": unpack_peer(*(int(x) for x in w[base + _PORT : base + _ADDR + 2])),
                    "opened_at": w[base + _OPENED] / 1000,
                    "bytes_in": int(w[base + _IN + 2]),
                    "bytes_out": written,
                    "pending_out": int(w[base + _PENDING]),
                    "kept": position != UNANCHORED,
                }
        return {"streams": streams}

    # -- writes (the connect process) ---------------------------------------------------
    def opened(
        self,
        slot: int,
        conn: int,
        born_at: int,
        peer: tuple[str, int] = ("", 0),
        opened_at: float = 0.0,
    ) -> None:
        """A new connection took ``slot`` while the outbound queue was read
        up to ``born_at``: both counts start at 0, anchored there."""
        base = self._base(slot)
        w = self._w
        w[base + _CONN] = 0  # while the entry is rewritten it is nobody's
        for i in range(1, WORDS):
            w[base + i] = 0
        w[base + _PAIRS + 1] = born_at
        w[base + _OPENED] = int(opened_at * 1000)
        w[base + _PORT], w[base + _ADDR], w[base + _ADDR + 1] = pack_peer(*peer)
        w[base + _CONN] = conn

    def commit(self, slot: int, side: int, new: int, at: int, position: int) -> None:
        """Make ``new`` the inbound count once its queue reaches ``at``;
        ``position`` is where that queue is now.  The caller publishes
        ``at`` before it commits this count again (so it commits only what
        will be published: what fits in the queue)."""
        i = self._checked(slot, side, at, position)
        w = self._w
        w[i] = w[i + 2]  # the stores of ``stores``, without building them (once per push)
        w[i + 1] = at
        w[i + 2] = new

    def settle(self, slot: int, side: int, position: int) -> None:
        """A new process starts with its queue at ``position``: a commit the
        dead one made but never published is dropped (``cur`` back to
        ``prev`` first, so a crash in between reads the same)."""
        i = self._base(slot) + self._side(side)
        w = self._w
        if w[i + 1] > position:
            w[i + 2] = w[i]
            w[i + 1] = 0

    def anchor(self, slot: int, written: int, position: int) -> None:
        """Every reply byte of this connection in codes before ``position``
        (``written`` of them) was taken by the kernel."""
        base = self._base(slot)
        w = self._w
        other = 1 - (w[base + _SEL] & 1)
        pair = base + _PAIRS + 2 * other
        w[pair] = written  # the stores of ``anchor_stores``, without building them
        w[pair + 1] = position
        w[base + _SEL] = other

    def anchor_stores(self, slot: int, written: int, position: int) -> list[tuple[int, int]]:
        """The (word index, value) stores of ``anchor``, in order: the copy
        not in use, then the word that makes it the valid one."""
        base = self._base(slot)
        other = 1 - (self._w[base + _SEL] & 1)
        pair = base + _PAIRS + 2 * other
        return [(pair, written), (pair + 1, position), (base + _SEL, other)]

    def unanchor(self, slot: int) -> None:
        """This connection's output is no longer kept in the queue: after a
        crash it is closed rather than resumed with a gap."""
        self.anchor(slot, 0, UNANCHORED)

    def set_pending(self, slot: int, n: int) -> None:
        self._w[self._base(slot) + _PENDING] = n

    # -- reads ---------------------------------------------------------------------------
    def conn(self, slot: int) -> int:
        return int(self._w[self._base(slot) + _CONN])

    def anchor_of(self, slot: int) -> tuple[int, int]:
        """(written, position) of the valid anchor copy."""
        base = self._base(slot)
        w = self._w
        i = base + _PAIRS + 2 * (w[base + _SEL] & 1)
        return int(w[i]), int(w[i + 1])

    def value(self, slot: int, side: int, position: int) -> int:
        """The inbound count that goes with its queue at ``position``."""
        return self._value(self._base(slot) + self._side(side), position)

    def _value(self, i: int, position: int) -> int:
        w = self._w
        return int(w[i + 2] if w[i + 1] <= position else w[i])

    def _base(self, slot: int) -> int:
        if not 0 <= slot < self.max_conns:
            raise IndexError(f"slot {slot} out of range 0..{self.max_conns - 1}")
        return slot * WORDS

    @staticmethod
    def _side(side: int) -> int:
        if side != INBOUND:
            raise ValueError(f"only the inbound count is committed by position, not side {side}")
        return side

    def stores(
        self, slot: int, side: int, new: int, at: int, position: int
    ) -> list[tuple[int, int]]:
        """The (word index, value) stores of ``commit``, in order (a test
        applies a prefix of them to stand for a crash between two)::

            prev = the count valid now; tag = at; cur = new
        """
        i = self._checked(slot, side, at, position)
        return [(i, int(self._w[i + 2])), (i + 1, at), (i + 2, new)]

    def _checked(self, slot: int, side: int, at: int, position: int) -> int:
        """The first word of a commit's count, once it is known to be
        allowed: the count valid now is then ``cur`` (its tag is passed)."""
        i = self._base(slot) + self._side(side)
        if self._w[i + 1] > position:
            raise RuntimeError(
                f"slot {slot}: the previous count (valid at {self._w[i + 1]}) was never "
                f"published (the queue is at {position}); commit only what is pushed"
            )
        if at < position:
            raise ValueError(f"a count is committed for a later position, not {at} < {position}")
        return i

    def store(self, index: int, value: int) -> None:
        self._w[index] = value
