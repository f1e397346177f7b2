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
    UNANCHORED,
    StreamLedger,
    inbound_skip,
    outbound_skip,
    pack_peer,
    region_size,
    resumable,
    trim,
    unpack_peer,
)


def ledger(slots: int = 3) -> StreamLedger:
    return StreamLedger(memoryview(bytearray(region_size(slots))), slots, init=True)


def test_a_crash_between_the_stores_of_a_commit_reads_what_the_queue_says() -> None:
    """Counts 0 -> 10 -> 25 -> 40 at queue positions 100 -> 200 -> 300 -> 400."""
    steps = [(10, 200), (25, 300), (40, 400)]
    position, count = 100, 0
    for new, at in steps:
        for crash_after in range(4):  # 0..3 of the three stores applied
            led = ledger()
            for done_new, done_at in steps[: steps.index((new, at))]:  # committed, published
                led.commit(1, INBOUND, done_new, done_at, done_at - 100)
            assert led.value(1, INBOUND, position) == count
            for index, value in led.stores(1, INBOUND, new, at, position)[:crash_after]:
                led.store(index, value)
            assert led.value(1, INBOUND, position) == count, (new, crash_after)  # not published
            if crash_after == 3:
                assert led.value(1, INBOUND, at) == new  # published
            led.settle(1, INBOUND, position)  # a new process; the queue still at ``position``
            assert led.value(1, INBOUND, position) == count
            led.commit(1, INBOUND, new, at, position)  # and it can commit again
            assert led.value(1, INBOUND, at) == new
        position, count = at, new


def test_an_anchor_is_the_old_pair_or_the_new_one_whatever_store_a_crash_stops_at() -> None:
    pairs = [(10, 100), (25, 300), (40, 420), (0, UNANCHORED), (41, 500)]
    for (w_old, p_old), (w_new, p_new) in itertools.pairwise(pairs):
        for crash_after in range(4):  # 0..3 of the three stores applied
            led = ledger()
            led.anchor(1, 7, 50)  # an older pair in the other copy
            led.anchor(1, w_old, p_old)
            for index, value in led.anchor_stores(1, w_new, p_new)[:crash_after]:
                led.store(index, value)
            expected = (w_new, p_new) if crash_after == 3 else (w_old, p_old)
            assert led.anchor_of(1) == expected, crash_after
            led.anchor(1, w_new, p_new)  # a new process can anchor again
            assert led.anchor_of(1) == (w_new, p_new)


def test_commit_and_anchor_store_what_their_crash_tested_stores_say() -> None:
    """``commit`` and ``anchor`` store their words directly (they run once
    per push and per write); the tests above crash between the stores of
    ``stores`` and ``anchor_stores``: the two must be the same stores."""
    direct, listed = ledger(), ledger()
    position = 0
    for step in range(1, 6):
        at = position + 100 * step
        for index, value in listed.stores(2, INBOUND, 10 * step, at, position):
            listed.store(index, value)
        direct.commit(2, INBOUND, 10 * step, at, position)
        for index, value in listed.anchor_stores(2, 7 * step, at):
            listed.store(index, value)
        direct.anchor(2, 7 * step, at)
        assert bytes(direct._w) == bytes(listed._w), step
        position = at


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
    with pytest.raises(ValueError, match="only the inbound"):
        led.value(0, INBOUND + 3, 0)


def test_a_new_connection_starts_its_entry_afresh() -> None:
    led = ledger()
    led.commit(2, INBOUND, 77, at=10, position=0)
    led.anchor(2, 99, 999)
    led.opened(2, conn=0x200000002, born_at=4096, peer=("127.0.0.1", 5555), opened_at=12.5)
    assert led.conn(2) == 0x200000002
    assert led.anchor_of(2) == (0, 4096)
    assert led.value(2, INBOUND, 10**9) == 0
    report = led.report("streams")["streams"][0x200000002]
    assert report["peer"] == "127.0.0.1:5555" and report["opened_at"] == 12.5
    assert report["kept"] and report["bytes_out"] == 0


def test_peers_are_kept_in_three_words() -> None:
    assert unpack_peer(*pack_peer("10.1.2.3", 80)) == "10.1.2.3:80"
    assert unpack_peer(*pack_peer("::1", 65535)) == "[::1]:65535"
    assert unpack_peer(*pack_peer("/tmp/sock", 0)) == "?"


def test_resumable_says_how_to_go_on_or_why_not() -> None:
    led = ledger()
    conn = 0x100000001
    led.opened(1, conn, born_at=300)
    led.commit(1, INBOUND, 40, at=500, position=0)  # 40 bytes queued, tail now 500
    led.anchor(1, 30, 800)  # 30 reply bytes written before outbound position 800
    # the kernel: 50 received, 20 unread (so 30 taken out: 10 queued but unread);
    # 34 taken (acked 30 + 4 unsent): 4 of the re-delivered bytes are there already
    r = resumable(led, 1, conn, (500, 700, 900), (50, 20, 30, 4))
    assert (r.problem, r.in_skip, r.out_skip, r.out_from) == ("", 10, 4, 800)
    assert (r.pushed, r.written) == (40, 30)
    assert resumable(led, 1, conn, (500, 850, 900), (50, 20, 30, 4)).out_from == 850
    assert "not this one" in resumable(led, 1, conn + 1, (500, 700, 900), (50, 20, 30, 4)).problem
    assert "hole" in resumable(led, 1, conn, (500, 700, 900), (50, 5, 30, 4)).problem
    assert "would be lost" in resumable(led, 1, conn, (500, 700, 900), (50, 20, 20, 4)).problem
    assert "past the queue" in resumable(led, 1, conn, (500, 700, 799), (50, 20, 30, 4)).problem
    led.unanchor(1)
    assert "slowly" in resumable(led, 1, conn, (500, 700, 900), (50, 20, 30, 4)).problem
    # a commit the dead process never published is dropped: 40 -> 45 at tail 600
    led.anchor(1, 30, 800)
    led.commit(1, INBOUND, 45, at=600, position=500)
    assert resumable(led, 1, conn, (500, 700, 900), (50, 20, 30, 4)).pushed == 40


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
