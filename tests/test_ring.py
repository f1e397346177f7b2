"""The ring of codes on a plain bytearray: wrap-around, edges, corruption."""

from __future__ import annotations

import random
from collections import deque

import pytest

from server import CodeTooLarge, CorruptQueue
from server.core.codering import CodeRing
from server.core.ring import CONTROL_SIZE, RECORD_HEADER, region_size


def make(capacity: int) -> tuple[bytearray, CodeRing]:
    buf = bytearray(region_size(capacity))
    return buf, CodeRing(memoryview(buf), capacity, init=True)


def code_for(i: int, size: int) -> bytes:
    return (i.to_bytes(4, "little") * (size // 4 + 1))[:size]


def ring_at(capacity: int, position: int) -> CodeRing:
    """An empty ring whose stream starts at ``position`` (as if that many
    bytes had gone through it)."""
    buf, ring = make(capacity)
    w = _words(buf)
    for word in (8, 11, 16, 19):  # tail, pushed_at, head, popped_at
        w[word] = position
    return ring


@pytest.mark.parametrize("capacity", [5, 17, 64, 3333])
def test_wraps_at_every_offset(capacity: int) -> None:
    """Start at every position of the ring and push records of many sizes,
    so the header and the payload are cut at every possible place."""
    for start in range(capacity):
        ring = ring_at(capacity, start + 7 * capacity)
        sizes = sorted({0, 1, 3, 4, 5, capacity // 3, capacity - RECORD_HEADER})
        for size in (s for s in sizes if s <= ring.max_code):
            code = bytes((start + k) % 251 for k in range(size))
            assert ring.push(code)
            assert ring.peek() == code
            assert ring.pop() == code
            assert ring.pop() is None
        # and a batch of two, cut somewhere in the middle
        if capacity >= 16:
            pair = [b"p" * (capacity // 4), b"q" * (capacity // 4)]
            assert ring.push_many(pair) == 2
            assert ring.pop_many() == pair
        assert ring.stats()["used_bytes"] == 0


def test_full_and_empty_edges() -> None:
    buf, ring = make(100)
    assert ring.pop() is None and ring.peek() is None and ring.empty()
    assert ring.push(b"x" * 96)  # exactly the whole ring
    s = ring.stats()
    assert (s["used_bytes"], s["free_bytes"], s["pending"]) == (100, 0, 1)
    assert not ring.push(b"")  # not even a zero-length code fits now
    assert ring.pop() == b"x" * 96
    assert ring.push(b"a" * 40) and ring.push(b"b" * 40)
    assert ring.stats()["free_bytes"] == 12
    assert not ring.push(b"c" * 9)  # needs 13
    assert ring.push(b"c" * 8)  # exactly the free space
    assert ring.stats()["free_bytes"] == 0
    assert [ring.pop(), ring.pop(), ring.pop(), ring.pop()] == [
        b"a" * 40,
        b"b" * 40,
        b"c" * 8,
        None,
    ]


def test_zero_length_codes() -> None:
    buf, ring = make(21)
    assert ring.push_many([b""] * 10) == 5
    assert ring.pop_many() == [b""] * 5
    assert ring.stats()["pushed"] == ring.stats()["popped"] == 5


def test_a_code_that_can_never_fit_is_an_error() -> None:
    buf, ring = make(100)
    with pytest.raises(CodeTooLarge) as info:
        ring.push(b"x" * 97)
    assert info.value.size == 97 and info.value.limit == 96
    assert "97 bytes" in str(info.value)
    ring.push(b"fill" * 10)  # even when full, too large is too large
    with pytest.raises(CodeTooLarge):
        ring.push(b"x" * 97)
    with pytest.raises(CodeTooLarge):
        ring.push_many([b"x" * 97])
    assert ring.push_many([b"ok", b"x" * 97]) == 1  # what fits is published first


def test_batches_respect_their_limits() -> None:
    buf, ring = make(3333)
    codes = [code_for(i, i % 50) for i in range(200)]
    pushed = ring.push_many(codes)
    assert 0 < pushed < 200
    got: list[bytes] = []
    got += ring.pop_many(max_codes=7)
    assert len(got) == 7
    got += ring.pop_many(max_bytes=100)
    assert sum(len(c) + 4 for c in got[7:]) <= 100 + 53
    while batch := ring.pop_many(max_bytes=1):  # always at least one code
        got += batch
    assert got == codes[:pushed]


@pytest.mark.parametrize("capacity", [17, 64, 333])
def test_peek_views_give_what_peek_many_gives_at_every_offset(capacity: int) -> None:
    """Views where a code lies in one piece, bytes where it wraps; the same
    codes, limits and end position as ``peek_many``, from any start."""
    for start in range(capacity):
        ring = ring_at(capacity, start + 5 * capacity)
        codes = [code_for(i, i % 7) for i in range(capacity // 6)]
        n = ring.push_many(codes)
        for limits in ((1 << 30, 1 << 20), (3, 1 << 20), (1 << 30, 9)):
            views, end = ring.peek_views(*limits)
            assert ([bytes(v) for v in views], end) == ring.peek_many(*limits)
        first, after_two = ring.peek_many(2)
        views, end = ring.peek_views(start=after_two)
        assert [bytes(v) for v in views] == codes[2:n] and end == ring.tail
        views, _ = ring.peek_views()
        assert sum(isinstance(v, memoryview) for v in views) >= n - 1  # at most one wraps
        with pytest.raises(CorruptQueue, match="peek position"):
            ring.peek_views(start=ring.tail + 1)


@pytest.mark.parametrize("length", [6, 100, 2**32 - 1])
def test_peek_views_check_every_record_length(length: int) -> None:
    buf, ring = make(3333)
    for word in (b"hello", b"world", b"again"):
        ring.push(word)
    second = CONTROL_SIZE + RECORD_HEADER + 5
    buf[second : second + 4] = length.to_bytes(4, "little")  # the second record's length
    # past the tail, or (6) within it, when the record after it does not chain
    with pytest.raises(CorruptQueue, match="record length"):
        ring.peek_views()


def test_randomised_against_a_model() -> None:
    rnd = random.Random(1234)
    for capacity in (9, 64, 333, 3333):
        buf, ring = make(capacity)
        model: deque[bytes] = deque()
        used = 0
        for _ in range(3000):
            op = rnd.random()
            if op < 0.35:
                code = rnd.randbytes(rnd.randint(0, min(ring.max_code, 80)))
                ok = ring.push(code)
                assert ok == (used + len(code) + 4 <= capacity)
                if ok:
                    model.append(code)
                    used += len(code) + 4
            elif op < 0.5:
                codes = [
                    rnd.randbytes(rnd.randint(0, min(ring.max_code, 20)))
                    for _ in range(rnd.randint(0, 6))
                ]
                n = ring.push_many(codes)
                model.extend(codes[:n])
                used += sum(len(c) + 4 for c in codes[:n])
            elif op < 0.8:
                code = ring.pop()
                assert code == (model.popleft() if model else None)
                if code is not None:
                    used -= len(code) + 4
            else:
                for code in ring.pop_many(
                    max_codes=rnd.randint(1, 5), max_bytes=rnd.randint(1, 99)
                ):
                    assert code == model.popleft()
                    used -= len(code) + 4
            s = ring.stats()
            assert (s["used_bytes"], s["pending"]) == (used, len(model))


def test_recover_keeps_pending_codes() -> None:
    buf, ring = make(3333)
    ring.push_many([b"one", b"two", b"three"])
    ring.pop()
    ring.release()
    again = CodeRing(memoryview(buf), 3333, init=False)
    assert again.pop_many() == [b"two", b"three"]


def _words(buf: bytearray) -> memoryview:
    return memoryview(buf)[:CONTROL_SIZE].cast("Q")


def test_recovery_repairs_the_counts_of_an_unpublished_batch() -> None:
    buf, ring = make(3333)
    ring.push_many([b"a", b"b"])
    ring.pop()
    w = _words(buf)
    # a producer that died after counting a batch of 5 but before the tail
    w[10], w[11], w[9] = w[9], w[8] + 999, w[9] + 5
    # a consumer that died after counting a pop but before the head
    w[18], w[19], w[17] = w[17], w[16] + 5, w[17] + 1
    w[24] = 1  # and it was asleep
    assert ring.stats()["pushed"] == 7
    ring.recover_producer()
    ring.recover_consumer()
    s = ring.stats()
    assert (s["pushed"], s["popped"], s["pending"]) == (2, 1, 1)
    assert not ring.sleeping


@pytest.mark.parametrize(
    ("word", "value", "field"),
    [
        (0, 1, "magic"),
        (1, 77, "capacity"),
        (8, 10**6, "tail - head"),  # more used than the capacity
        (16, 10**6, "tail - head"),  # head beyond tail
    ],
)
def test_corrupt_counters_are_detected(word: int, value: int, field: str) -> None:
    buf, ring = make(3333)
    ring.push(b"hello")
    _words(buf)[word] = value
    with pytest.raises(CorruptQueue) as info:
        CodeRing(memoryview(buf), 3333, init=False)
    assert info.value.field == field
    if word >= 8:
        for op in (ring.pop, ring.peek, lambda: ring.push(b"x"), ring.pop_many):
            with pytest.raises(CorruptQueue):
                op()


@pytest.mark.parametrize("length", [6, 100, 2**32 - 1])
def test_a_corrupt_record_length_is_detected(length: int) -> None:
    buf, ring = make(3333)
    ring.push(b"hello")
    ring.push(b"world")
    buf[CONTROL_SIZE : CONTROL_SIZE + 4] = length.to_bytes(4, "little")
    # recovery walks every pending record and finds that they do not chain
    with pytest.raises(CorruptQueue, match="record length"):
        CodeRing(memoryview(buf), 3333, init=False)
    # a live consumer never reads past the tail: a length within it is
    # taken (nothing else can tell), the misaligned next one is not
    with pytest.raises(CorruptQueue, match="record length"):
        for _ in range(3):
            ring.pop()
    if length > 6:
        with pytest.raises(CorruptQueue, match="record length"):
            ring.peek()
        with pytest.raises(CorruptQueue, match="record length"):
            ring.pop_many()


def test_region_size_is_checked() -> None:
    with pytest.raises(ValueError, match="needs a region"):
        CodeRing(memoryview(bytearray(100)), 64, init=True)
    with pytest.raises(ValueError, match="at least"):
        CodeRing(memoryview(bytearray(region_size(4))), 4, init=True)
