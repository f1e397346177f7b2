"""Framing, fed all at once and one byte at a time."""

from __future__ import annotations

import random

import pytest

from server import BadCode, ConfigError, FrameTooLarge
from server.core.codes import frame_records, payloads
from server.core.framing import LengthFraming, LineFraming, make_framing

PAYLOADS = [b"", b"a", b"hello world", bytes(range(256)) * 4, b"x" * 100]


def feed_bytewise(framer: LengthFraming | LineFraming, data: bytes) -> list[bytes]:
    out: list[bytes] = []
    for i in range(len(data)):
        out += framer.feed(data[i : i + 1])
    return out


@pytest.mark.parametrize("bytewise", [False, True])
def test_length_framing_round_trip(bytewise: bool) -> None:
    framer = LengthFraming(max_frame=1024)
    stream = b"".join(framer.encode(p) for p in PAYLOADS)
    got = feed_bytewise(framer, stream) if bytewise else framer.feed(stream)
    assert got == PAYLOADS
    assert framer.buffered == 0


def test_length_framing_keeps_a_partial_frame() -> None:
    framer = LengthFraming()
    assert framer.feed(b"\0\0\0\x05hel") == []
    assert framer.buffered == 7
    assert framer.feed(b"lo\0\0") == [b"hello"]
    assert framer.feed(b"\0\0") == [b""]


def test_length_framing_refuses_a_large_header_before_its_payload() -> None:
    framer = LengthFraming(max_frame=100)
    framer.feed((100).to_bytes(4, "big") + b"x" * 100)
    with pytest.raises(FrameTooLarge) as info:
        framer.feed((101).to_bytes(4, "big"))
    assert (info.value.size, info.value.limit) == (101, 100)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("bytewise", [False, True])
def test_line_framing(bytewise: bool) -> None:
    framer = LineFraming(max_frame=20)
    stream = b"hello\nworld\r\n\nlast"
    got = feed_bytewise(framer, stream) if bytewise else framer.feed(stream)
    assert got == [b"hello", b"world", b""]
    assert framer.feed(b"\n") == [b"last"]
    assert framer.encode(b"hi") == b"hi\n" and framer.encode(b"hi\n") == b"hi\n"


def test_line_framing_limits() -> None:
    framer = LineFraming(max_frame=5)
    assert framer.feed(b"12345\r\n") == [b"12345"]
    assert framer.feed(b"12345\r") == []  # may still end well
    with pytest.raises(FrameTooLarge, match="without a newline"):
        LineFraming(max_frame=5).feed(b"1234567")
    with pytest.raises(FrameTooLarge, match="line of 6 bytes"):
        LineFraming(max_frame=5).feed(b"123456\n")


def test_unknown_framing_is_a_config_error_that_names_it() -> None:
    with pytest.raises(ConfigError, match="--framing 'xml'.*length, line") as info:
        make_framing("xml")
    assert (info.value.option, info.value.value) == ("--framing", "xml")


@pytest.mark.parametrize("cls", [LengthFraming, LineFraming])
def test_take_gives_frame_records_in_any_pieces(cls) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(7)
    frames = [bytes(rng.choice(b"ab\r") for _ in range(rng.randint(0, 60))) for _ in range(300)]
    frames = [p.rstrip(b"\r") for p in frames]
    wire = b"".join(cls(100).encode(p) for p in frames)
    reader = cls(100)
    got: list[bytes] = []
    i = 0
    while i < len(wire):
        k = rng.randint(1, 50)
        got += [p for body in reader.take(wire[i : i + k]) for p in payloads(body)]
        i += k
    assert got == frames and reader.buffered == 0


def test_length_framing_passes_whole_frames_through_untouched() -> None:
    wire = b"".join(LengthFraming().encode(p) for p in (b"a", b"", b"bc"))
    assert LengthFraming().take(wire) == [wire]  # the records are the wire bytes
    assert LengthFraming().take(wire) == [frame_records([b"a", b"", b"bc"])]


def test_line_framing_writes_records() -> None:
    assert LineFraming().take(b"hi\r\n\nyo\n") == [frame_records([b"hi", b"", b"yo"])]


@pytest.mark.parametrize("cls", [LengthFraming, LineFraming])
def test_take_refuses_oversized_frames(cls) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FrameTooLarge):
        cls(10).take(cls(100).encode(b"x" * 11) + b"\n")


def test_payloads_refuse_torn_records() -> None:
    with pytest.raises(BadCode, match="runs 2 bytes past"):
        payloads(b"\0\0\0\5abc")
    with pytest.raises(BadCode, match="stray bytes"):
        payloads(b"\0\0\0\1a\0\0")


def test_payloads_read_from_an_offset_as_from_a_copy() -> None:
    head = b"H" * 9  # a code's header, which payloads skips
    for body in (b"", b"\0\0\0\2ab\0\0\0\0", b"\0\0\0\3xyz"):
        assert payloads(head + body, len(head)) == payloads(body)
    for torn, where in ((b"\0\0\0\5abc", "a frame at 0 of"), (b"\0\0\0\1a\0\0", "2 stray")):
        with pytest.raises(BadCode, match=where) as err:
            payloads(head + torn, len(head))
        with pytest.raises(BadCode) as same:
            payloads(torn)
        assert str(err.value) == str(same.value)  # positions counted from the body


@pytest.mark.parametrize("cls", [LengthFraming, LineFraming])
@pytest.mark.parametrize("bytewise", [False, True])
def test_take_cuts_bodies_between_frames(cls, bytewise: bool) -> None:  # type: ignore[no-untyped-def]
    frames = [b"x" * n for n in (5, 30, 1, 0, 44, 7)]
    wire = b"".join(cls(100).encode(p) for p in frames)
    reader = cls(100)
    if bytewise:
        bodies = [body for i in range(len(wire)) for body in reader.take(wire[i : i + 1], 40)]
    else:
        bodies = reader.take(wire, 40)
    assert [p for body in bodies for p in payloads(body)] == frames
    assert all(len(body) <= 40 or len(payloads(body)) == 1 for body in bodies)
    if not bytewise:
        assert len(bodies) > 1


@pytest.mark.parametrize("cls", [LengthFraming, LineFraming])
def test_a_large_frame_in_small_pieces_costs_linear_time(cls) -> None:  # type: ignore[no-untyped-def]
    # 8 MiB in 4 KiB reads: copying the partial frame on every read would move
    # about 8 GiB (seconds); appending moves each byte once (milliseconds).
    import time

    size = 8 << 20
    payload = b"x" * size
    wire = cls(size).encode(payload)
    reader = cls(size)
    t = time.perf_counter()
    got = [body for i in range(0, len(wire), 4096) for body in reader.take(wire[i : i + 4096])]
    elapsed = time.perf_counter() - t
    assert [p for body in got for p in payloads(body)] == [payload]
    assert elapsed < 1.0, f"{elapsed:.2f} s for one frame in pieces"
