"""The outbound head and the anchors, on numbers (``server.core.outflow``).

The model below is the connect process's outbound side without sockets:
codes for a few clients, a "kernel" per client that takes a random number
of the bytes written to it, the stream ledger's anchors, and the head that
``ReplyAnchors`` lets move.  It is crashed after every step of many random
runs; the next "process" delivers the codes from the head again, each
client drops what its kernel took, and every client must end up with its
stream exactly: nothing lost, nothing twice.
"""

from __future__ import annotations

import random

import pytest

from server.core.outflow import ReplyAnchors
from server.core.streams import UNANCHORED, StreamLedger, outbound_skip, region_size

CLIENTS = 4


class Model:
    def __init__(self, rng: random.Random, limit: int = 10**9) -> None:
        self.rng = rng
        self.codes: list[tuple[int, int, bytes]] = []  # (position, conn, bytes); conn -1: all
        self.tail = 0
        self.ledger = StreamLedger(memoryview(bytearray(region_size(CLIENTS))), CLIENTS, init=True)
        self.anchors = ReplyAnchors(0, limit)
        self.out = {c: bytearray() for c in range(CLIENTS)}
        self.delivered = dict.fromkeys(range(CLIENTS), 0)
        self.anchor = dict.fromkeys(range(CLIENTS), 0)
        self.unkept: set[int] = set()
        self.kernel = {c: bytearray() for c in range(CLIENTS)}  # what each kernel took
        self.head = 0
        for c in range(CLIENTS):
            self.ledger.opened(c, c + 1, born_at=0)

    def produce(self) -> None:
        for _ in range(self.rng.randint(1, 4)):
            conn = self.rng.randrange(-1, CLIENTS)
            body = bytes([len(self.codes) % 256]) * self.rng.randint(1, 9)
            self.codes.append((self.tail, conn, body))
            self.tail += len(body) + 4

    def deliver(self) -> None:
        batch = [code for code in self.codes if code[0] >= self.anchors.read]
        if not batch:
            return
        dirty = set()
        for _pos, conn, body in batch:
            for c in range(CLIENTS) if conn < 0 else [conn]:
                self.out[c] += body
                self.delivered[c] += len(body)
                dirty.add(c)
        self.anchors.delivered(self.tail, len(batch))
        for c in sorted(dirty):
            self.flush(c)
            if self.out[c] and c not in self.unkept:
                self.anchors.pin(c, self.anchor[c])
        for c in self.anchors.overdue():
            self.anchors.unpin(c)
            self.ledger.unanchor(c)
            self.unkept.add(c)
        moved = self.anchors.advance()
        if moved is not None:
            self.head = moved[0]

    def flush(self, c: int) -> None:
        n = self.rng.randint(0, len(self.out[c]))
        self.kernel[c] += self.out[c][:n]
        del self.out[c][:n]
        if not self.out[c] and (c in self.unkept or self.anchor[c] != self.anchors.read):
            self.ledger.anchor(c, self.delivered[c], self.anchors.read)
            self.anchor[c] = self.anchors.read
            self.anchors.unpin(c)
            self.unkept.discard(c)

    def stream(self, c: int) -> bytes:
        return b"".join(body for _pos, conn, body in self.codes if conn in (-1, c))

    def crash_and_redeliver(self) -> dict[int, bytes | None]:
        """What each client has once a new process delivered from the head
        (None: closed, its output was not kept)."""
        result: dict[int, bytes | None] = {}
        for c in range(CLIENTS):
            written, position = self.ledger.anchor_of(c)
            if position == UNANCHORED:
                result[c] = None
                continue
            assert self.head <= position or not any(
                conn in (-1, c) for pos, conn, _b in self.codes if position <= pos < self.head
            ), "the head passed bytes of a pinned client"
            r = outbound_skip(written, len(self.kernel[c]), 0)
            assert r.ok, r.problem
            start = max(position, self.head)
            again = b"".join(
                body for pos, conn, body in self.codes if pos >= start and conn in (-1, c)
            )
            result[c] = bytes(self.kernel[c]) + again[r.skip :]
        return result


@pytest.mark.parametrize("seed", range(60))
def test_a_crash_after_any_step_loses_and_repeats_no_reply_byte(seed: int) -> None:
    rng = random.Random(seed)
    m = Model(rng, limit=rng.choice([40, 10**9]))
    for _step in range(40):
        rng.choice([m.produce, m.deliver, m.deliver, lambda: m.flush(rng.randrange(CLIENTS))])()
        for c, got in m.crash_and_redeliver().items():
            if got is not None:
                assert got == m.stream(c), (seed, _step, c)
            else:
                assert c in m.unkept


def test_the_head_waits_for_a_pinned_client_and_moves_when_it_is_written() -> None:
    a = ReplyAnchors(100, limit=1000)
    a.delivered(150, 3)
    a.pin(7, 100)  # client 7 still has bytes of that batch
    assert a.advance() is None and a.behind == 50
    a.delivered(200, 2)
    a.unpin(7)
    assert a.advance() == (200, 5)
    assert a.advance() is None


def test_the_head_stops_at_the_last_batch_end_before_the_oldest_anchor() -> None:
    a = ReplyAnchors(0, limit=1000)
    for end in (10, 20, 30, 40):
        a.delivered(end, 1)
    a.pin(1, 30)
    a.pin(2, 20)
    a.pin(2, 35)  # pinned already: the older anchor counts
    assert a.advance() == (20, 2)
    a.unpin(2)
    assert a.advance() == (30, 1)
    assert a.pinned == {1: 30}


def test_a_client_far_behind_is_overdue() -> None:
    a = ReplyAnchors(0, limit=100)
    a.delivered(50, 1)
    a.pin(1, 0)
    a.pin(2, 50)
    assert a.overdue() == []
    a.delivered(120, 1)
    assert a.overdue() == [1]


def test_an_anchor_before_the_head_pins_at_the_head() -> None:
    a = ReplyAnchors(0, limit=100)
    a.delivered(50, 1)
    assert a.advance() == (50, 1)
    a.pin(3, 10)  # anchored long ago, nothing for it since
    assert a.pinned[3] == 50


def test_bad_batches_are_refused() -> None:
    a = ReplyAnchors(10, limit=1)
    with pytest.raises(ValueError):
        a.delivered(5, 1)
    with pytest.raises(ValueError):
        a.delivered(20, 0)
    with pytest.raises(ValueError):
        ReplyAnchors(0, limit=0)
