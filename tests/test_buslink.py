"""The relays' link protocol on bytes alone: framing, the handshake, order,
retransmissions, acknowledgements (no sockets, no clock)."""

from __future__ import annotations

import pytest

from server.core.buslink import (
    Acked,
    AckTimer,
    Batch,
    Duplicate,
    Hello,
    LinkError,
    LinkReader,
    SentWindow,
    ack_frame,
    batch_frame,
    envelope,
    hello_frame,
    records_frame,
    target_of,
)
from server.errors import BadCode


def code(s: int) -> bytes:
    return envelope("1.0.0.1", "2.0.0.1", b"m%d" % s * (s % 5))


def stream(first: int, last: int, per_batch: int = 3) -> bytes:
    """Messages first..last, in batches of ``per_batch``."""
    seqs = list(range(first, last + 1))
    runs = [seqs[i : i + per_batch] for i in range(0, len(seqs), per_batch)]
    return b"".join(batch_frame(run[0], [code(s) for s in run]) for run in runs)


def seqs(events: list) -> list[int]:  # type: ignore[type-arg]
    return [e.first + i for e in events if isinstance(e, Batch) for i in range(len(e.codes))]


def test_a_conversation_in_one_write_and_byte_by_byte() -> None:
    wire = hello_frame("h1", 7) + stream(1, 20) + ack_frame(3)
    whole = LinkReader(applied=0, expected_peer="h1").feed(wire)
    reader = LinkReader(applied=0, expected_peer="h1")
    pieces = [e for i in range(len(wire)) for e in reader.feed(wire[i : i + 1])]
    assert whole == pieces
    assert whole[0] == Hello("h1", 7)
    assert seqs(whole) == list(range(1, 21))
    assert whole[2] == Batch(4, [code(4), code(5), code(6)])  # code(5): an empty payload
    assert whole[-1] == Acked(3)
    assert target_of(code(5)) == b"2.0.0.1"


def test_a_reconnect_retransmits_and_the_applied_are_skipped() -> None:
    # the receiver applied 1..5 before the link dropped; the sender had sent 1..9
    reader = LinkReader(applied=5, expected_peer="h1")
    events = reader.feed(hello_frame("h1", 0) + stream(1, 3) + stream(4, 9, per_batch=6))
    assert events[1] == Duplicate(3)  # a whole batch applied before
    assert events[2] == Batch(6, [code(6), code(7), code(8), code(9)])  # its front was
    reader.note_applied(7)
    with pytest.raises(ValueError, match="in order"):
        reader.note_applied(7)
    with pytest.raises(ValueError, match="in order"):
        reader.note_applied(10)  # not even received
    reader.note_applied(9)


def _batch(first: int, count: int, records: bytes) -> bytes:
    """A BATCH frame as raw bytes, whatever its records say."""
    body = b"\x02" + first.to_bytes(8, "big") + count.to_bytes(4, "big") + records
    return len(body).to_bytes(4, "big") + body


@pytest.mark.parametrize(
    ("wire", "words"),
    [
        (stream(1, 1), "BATCH before HELLO"),
        (hello_frame("h3", 0), "HELLO from host 'h3'; this link is to 'h1'"),
        (hello_frame("h1", 0) + hello_frame("h1", 0), "a second HELLO"),
        (hello_frame("h1", 0) + stream(2, 2), "BATCH 2..2 after 0: a gap"),
        (b"\xff\xff\xff\xff", "a frame of 4294967295 bytes"),
        (b"\x00\x00\x00\x00", "a frame of 0 bytes"),
        (b"\x00\x00\x00\x02\x01\x01", "HELLO of version 1; we speak 2"),
        (hello_frame("h1", 0) + b"\x00\x00\x00\x01\x09", "unknown frame type 9"),
        (hello_frame("h1", 0) + b"\x00\x00\x00\x03\x03\x00\x00", "an ACK of 2 bytes"),
        (hello_frame("h1", 0) + _batch(1, 1, b"\x05\x00\x00\x00ab"), "runs past its end"),
        (hello_frame("h1", 0) + _batch(1, 2, b"\x01\x00\x00\x00x"), "cut short after 1"),
        (hello_frame("h1", 0) + _batch(1, 0, b""), "an empty BATCH"),
        (hello_frame("h1", 0) + _batch(1, 1, b"\x00\x00\x00\x00z"), "1 stray bytes"),
    ],
)
def test_broken_bytes_are_named(wire: bytes, words: str) -> None:
    with pytest.raises(LinkError, match=words):
        LinkReader(applied=0, expected_peer="h1", max_frame=1 << 16).feed(wire)


def test_a_frame_over_the_limit_is_refused_before_it_is_buffered() -> None:
    reader = LinkReader(applied=0, max_frame=1000)
    reader.feed(hello_frame("h1", 0))
    big = batch_frame(1, [envelope("a", "b", bytes(2000))])
    with pytest.raises(LinkError, match="2021 bytes"):
        reader.feed(big[:4])  # the length alone is enough


def test_acks_every_n_or_after_t() -> None:
    timer = AckTimer(every=3, ms=20)
    assert timer.timeout_ms(0) is None  # nothing to acknowledge: sleep as long as you like
    assert timer.applied(1, now_ms=0) is None
    assert timer.applied(2, now_ms=1) is None
    assert timer.applied(3, now_ms=2) == 3  # the third
    assert timer.applied(4, now_ms=10) is None
    assert timer.timeout_ms(15) == 15.0  # due at 30
    assert timer.due(4, now_ms=29) is None
    assert timer.due(4, now_ms=30) == 4
    assert timer.due(4, now_ms=100) is None  # nothing new


def test_the_sent_window_frees_what_an_ack_covers() -> None:
    window = SentWindow(base=10, head=1000)  # 10 taken before; the oldest is 11
    assert window.sending(2, end=1011) == 11  # 11 and 12
    assert window.next_pos == 1011
    assert window.sending(1, end=1019) == 13
    assert window.in_flight == 3
    assert window.acked(10) is None  # nothing new
    assert window.acked(11) is None  # inside the first batch: freed with a later ACK
    assert window.acked(12) == 1011  # commit up to the end of 12
    assert window.acked(13) == 1019 and window.in_flight == 0
    with pytest.raises(LinkError, match="ACK of 14, but only 13 were sent"):
        window.acked(14)


def test_records_from_the_ring_make_the_same_frame_as_the_codes() -> None:
    from server.core.codering import CodeRing
    from server.core.ring import region_size

    ring = CodeRing(memoryview(bytearray(region_size(256))), 256, init=True)
    ring.push_many([b"x" * 100])
    ring.pop_many(1)  # the next records wrap round the end of the ring
    codes = [code(1), code(2), code(3)]
    ring.push_many(codes)
    start = ring.head
    records, count, end = ring.peek_records(start, 1 << 20)
    assert count == 3 and end == ring.tail
    assert records_frame(7, count, records) == batch_frame(7, codes)
    one, n, after = ring.peek_records(start, 1)  # at least one, even over the limit
    assert n == 1 and after == start + 4 + len(codes[0])
    assert ring.peek_records(ring.tail, 100) == (b"", 0, ring.tail)


def test_a_listener_learns_the_applied_seq_from_the_hello() -> None:
    asked = []

    def applied_of(peer: str) -> int:
        asked.append(peer)
        return 2

    reader = LinkReader(applied=applied_of)
    events = reader.feed(hello_frame("h2", 0) + stream(1, 4))  # all in one piece
    assert asked == ["h2"] and reader.applied == 2
    assert events[1:] == [Batch(3, [code(3)]), Batch(4, [code(4)])]  # 1 and 2 were applied


def test_a_message_whose_addresses_do_not_fit_is_named() -> None:
    for bad in (b"", b"\x05ab", b"\x01a\x09b", b"\x00\x01a"):
        with pytest.raises(BadCode, match="do not fit"):
            target_of(bad)
