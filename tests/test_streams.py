"""The stream ledger and the resume decisions, on numbers and a bytearray.

A restarted connect process resumes a client's streams from the ledger and
the kernel's counters (``server.core.streams``).  Here every crash point of
a commit, and every split between what was queued, consumed, written and
taken, is tried.
"""

from __future__ import annotations

import itertools

import pytest

from server.core.streams import (
    INBOUND,
    OUTBOUND,
    StreamLedger,
    inbound_skip,
    outbound_skip,
    region_size,
    trim,
)


def ledger(slots: int = 3) -> StreamLedger:
    return StreamLedger(memoryview(bytearray(region_size(slots))), slots, init=True)


@pytest.mark.parametrize("side", [INBOUND, OUTBOUND])
def test_a_crash_between_the_stores_of_a_commit_reads_what_the_queue_says(side: int) -> None:
    """Counts 0 -> 10 -> 25 -> 40 at queue positions 100 -> 200 -> 300 -> 400."""
    steps = [(10, 200), (25, 300), (40, 400)]
    position, count = 100, 0
    for new, at in steps:
        for crash_after in range(4):  # 0..3 of the three stores applied
            led = ledger()
            for done_new, done_at in steps[: steps.index((new, at))]:  # committed, published
                led.commit(1, side, done_new, done_at, done_at - 100)
            assert led.value(1, side, position) == count
            for index, value in led.stores(1, side, new, at, position)[:crash_after]:
                led.store(index, value)
            assert led.value(1, side, position) == count, (new, crash_after)  # not published
            if crash_after == 3:
                assert led.value(1, side, at) == new  # published
            led.settle(1, side, position)  # a new process; the queue still at ``position``
            assert led.value(1, side, position) == count
            led.commit(1, side, new, at, position)  # and it can commit again
            assert led.value(1, side, at) == new
        position, count = at, new
    other = INBOUND + OUTBOUND - side
    assert ledger().value(1, other, 10**9) == 0


def test_a_commit_before_the_last_one_was_published_is_a_bug_said_so() -> None:
    led = ledger()
    led.commit(0, INBOUND, 5, at=50, position=0)
    with pytest.raises(RuntimeError, match="never published"):
        led.commit(0, INBOUND, 9, at=90, position=10)
    led.commit(0, INBOUND, 9, at=90, position=50)  # published: fine
    with pytest.raises(ValueError, match="later position"):
        led.commit(0, INBOUND, 10, at=80, position=90)
    with pytest.raises(IndexError):
        led.value(3, INBOUND, 0)


def test_a_new_connection_starts_its_entry_afresh() -> None:
    led = ledger()
    led.commit(2, OUTBOUND, 77, at=10, position=0)
    led.opened(2, conn=0x200000002, born_at=4096)
    assert (led.conn(2), led.born_at(2)) == (0x200000002, 4096)
    assert led.value(2, OUTBOUND, 10**9) == 0 and led.value(2, INBOUND, 10**9) == 0


def test_every_split_of_an_inbound_stream_resumes_at_the_first_byte_not_queued() -> None:
    """A process queues whole frames and only then takes them out of the
    socket: pushed >= consumed.  Whatever it had done when it died, dropping
    ``skip`` unread bytes puts the next read at ``pushed``."""
    frames = [0, 5, 9, 20, 21, 30]  # frame boundaries in the stream
    total = 30
    for pushed, consumed in itertools.product(frames, frames):
        for received in range(consumed, total + 1):
            r = inbound_skip(pushed, received, received - consumed)
            if consumed > pushed:
                assert not r.ok and "hole" in r.problem
            elif pushed > received:
                assert not r.ok and "not this connection's" in r.problem
            else:
                assert r.ok and consumed + r.skip == pushed
    assert "unread of" in inbound_skip(0, 5, 6).problem


def test_every_split_of_an_outbound_stream_resumes_at_the_first_byte_not_taken() -> None:
    stream = bytes(range(40))
    cuts = [0, 7, 8, 19, 40]  # code boundaries of this connection's replies
    codes = [stream[a:b] for a, b in itertools.pairwise(cuts)]
    for h, written in enumerate(cuts[:-1]):  # the head is before code h
        for taken in range(written, len(stream) + 1):
            for acked in range(0, taken + 1, 3):
                r = outbound_skip(written, acked, taken - acked)
                assert r.ok
                assert b"".join(trim(codes[h:], r.skip)) == stream[taken:]
    assert "would be lost" in outbound_skip(10, 3, 4).problem
    assert "impossible" in outbound_skip(0, -1, 0).problem


def test_trim() -> None:
    assert trim([b"abc", b"de", b"f"], 0) == [b"abc", b"de", b"f"]
    assert trim([b"abc", b"de", b"f"], 4) == [b"e", b"f"]
    assert trim([b"abc", b"de", b"f"], 6) == []
    assert trim([b"", b"ab"], 1) == [b"b"]
