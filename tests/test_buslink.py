"""The relays' link protocol on bytes alone: framing, the handshake, order,
retransmissions, acknowledgements (no sockets, no clock)."""

from __future__ import annotations

import pytest

from server.core.buslink import (
    Acked,
    AckTimer,
    Duplicate,
    Hello,
    LinkError,
    LinkReader,
    Message,
    SentWindow,
    ack_frame,
    data_frame,
    hello_frame,
)


def stream(first: int, last: int) -> bytes:
    return b"".join(
        data_frame(s, "1.0.0.1", "2.0.0.1", b"m%d" % s * (s % 5)) for s in range(first, last + 1)
    )


def test_a_conversation_in_one_write_and_byte_by_byte() -> None:
    wire = hello_frame("h1", 7) + stream(1, 20) + ack_frame(3)
    whole = LinkReader(applied=0, expected_peer="h1").feed(wire)
    reader = LinkReader(applied=0, expected_peer="h1")
    pieces = [e for i in range(len(wire)) for e in reader.feed(wire[i : i + 1])]
    assert whole == pieces
    assert whole[0] == Hello("h1", 7)
    assert [e.seq for e in whole[1:21] if isinstance(e, Message)] == list(range(1, 21))
    assert whole[5] == Message(5, "1.0.0.1", "2.0.0.1", b"")  # 5 % 5 == 0: an empty payload
    assert whole[-1] == Acked(3)


def test_a_reconnect_retransmits_and_the_applied_are_skipped() -> None:
    # the receiver applied 1..5 before the link dropped; the sender had sent 1..9
    reader = LinkReader(applied=5, expected_peer="h1")
    events = reader.feed(hello_frame("h1", 0) + stream(3, 9))
    assert events[1:4] == [Duplicate(3), Duplicate(4), Duplicate(5)]
    assert [e.seq for e in events[4:]] == [6, 7, 8, 9]
    reader.note_applied(6)
    with pytest.raises(ValueError, match="in order"):
        reader.note_applied(8)


@pytest.mark.parametrize(
    ("wire", "words"),
    [
        (stream(1, 1), "DATA before HELLO"),
        (hello_frame("h3", 0), "HELLO from host 'h3'; this link is to 'h1'"),
        (hello_frame("h1", 0) + hello_frame("h1", 0), "a second HELLO"),
        (hello_frame("h1", 0) + stream(2, 2), "DATA 2 after 0: a gap"),
        (b"\xff\xff\xff\xff", "a frame of 4294967295 bytes"),
        (b"\x00\x00\x00\x00", "a frame of 0 bytes"),
        (b"\x00\x00\x00\x02\x01\x02", "HELLO of version 2"),
        (hello_frame("h1", 0) + b"\x00\x00\x00\x01\x09", "unknown frame type 9"),
        (hello_frame("h1", 0) + b"\x00\x00\x00\x03\x03\x00\x00", "an ACK of 2 bytes"),
        (hello_frame("h1", 0) + b"\x00\x00\x00\x0b\x02" + bytes(8) + b"\x05ab", "cut short"),
    ],
)
def test_broken_bytes_are_named(wire: bytes, words: str) -> None:
    with pytest.raises(LinkError, match=words):
        LinkReader(applied=0, expected_peer="h1", max_frame=1 << 16).feed(wire)


def test_a_frame_over_the_limit_is_refused_before_it_is_buffered() -> None:
    reader = LinkReader(applied=0, max_frame=1000)
    reader.feed(hello_frame("h1", 0))
    big = data_frame(1, "a", "b", bytes(2000))
    with pytest.raises(LinkError, match="2013 bytes"):
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
    assert window.sending([b"aa", b"b"], record_header=4) == [11, 12]
    assert window.next_pos == 1000 + 6 + 5
    assert window.sending([b"cccc"], record_header=4) == [13]
    assert window.in_flight == 3
    assert window.acked(10) is None  # nothing new
    assert window.acked(12) == 1011  # commit up to the end of 12
    assert window.acked(13) == 1019 and window.in_flight == 0
    with pytest.raises(LinkError, match="ACK of 14, but only 13 were sent"):
        window.acked(14)


def test_a_listener_learns_the_applied_seq_from_the_hello() -> None:
    asked = []

    def applied_of(peer: str) -> int:
        asked.append(peer)
        return 2

    reader = LinkReader(applied=applied_of)
    events = reader.feed(hello_frame("h2", 0) + stream(1, 4))  # all in one piece
    assert asked == ["h2"] and reader.applied == 2
    assert events[1:3] == [Duplicate(1), Duplicate(2)]
    assert [e.seq for e in events[3:]] == [3, 4]
