"""The header and the allocator on a plain bytearray (no System V)."""

from __future__ import annotations

import pickle

import pytest

from server import CorruptSegment, Detached, LayoutMismatch, SegmentFull, SharedMemory, StartMode
from server.core.header import ALIGN, HEADER_SIZE, MAX_ENTRIES, SegmentHeader


def fresh(size: int = 64 * 1024) -> tuple[bytearray, SharedMemory]:
    buf = bytearray(size)
    return buf, SharedMemory(buf, StartMode.INIT)


def test_placements_follow_each_other_aligned() -> None:
    buf, shm = fresh()
    a = shm.place("a", "Blob", 100)
    b = shm.place("b", "Blob", 3333)
    c = shm.place("c", "Blob", 1)
    shm.mark_ready()
    offsets = [p.offset for p in shm.placements()]
    assert offsets[0] == HEADER_SIZE
    assert offsets[1] == HEADER_SIZE + 128  # 100 rounded up to 64
    assert offsets[2] == offsets[1] + 3392
    assert all(o % ALIGN == 0 for o in offsets)
    assert (len(a), len(b), len(c)) == (100, 3333, 1)


def test_recover_keeps_data_and_checks_the_same_layout() -> None:
    buf, shm = fresh()
    shm.place("in", "Blob", 100)[:5] = b"hello"
    shm.place("out", "Blob", 200)
    shm.mark_ready()
    shm.detach()

    again = SharedMemory(buf, StartMode.RECOVER)
    assert bytes(again.place("in", "Blob", 100)[:5]) == b"hello"
    again.place("out", "Blob", 200)
    again.mark_ready()


@pytest.mark.parametrize(
    "second",
    [("out", "Blob", 201), ("other", "Blob", 200), ("out", "Queue", 200)],
)
def test_recover_refuses_another_layout(second: tuple[str, str, int]) -> None:
    buf, shm = fresh()
    shm.place("in", "Blob", 100)
    shm.place("out", "Blob", 200)
    shm.mark_ready()
    shm.detach()
    again = SharedMemory(buf, StartMode.RECOVER)
    again.place("in", "Blob", 100)
    with pytest.raises(LayoutMismatch) as info:
        again.place(*second)
    assert "python -m server clean" in str(info.value)


def test_recover_refuses_fewer_or_more_objects() -> None:
    buf, shm = fresh()
    shm.place("in", "Blob", 100)
    shm.place("out", "Blob", 100)
    shm.mark_ready()
    shm.detach()
    fewer = SharedMemory(buf, StartMode.RECOVER)
    fewer.place("in", "Blob", 100)
    with pytest.raises(LayoutMismatch, match="holds 2 objects but this configuration placed 1"):
        fewer.mark_ready()
    more = SharedMemory(buf, StartMode.RECOVER)
    more.place("in", "Blob", 100)
    more.place("out", "Blob", 100)
    with pytest.raises(LayoutMismatch, match="holds only 2 objects"):
        more.place("extra", "Blob", 100)


def test_an_unfinished_init_is_not_recoverable() -> None:
    buf, shm = fresh()
    shm.place("in", "Blob", 100)
    # no mark_ready(): as if the process died during INIT
    shm.detach()
    with pytest.raises(CorruptSegment, match="initialisation never completed"):
        SharedMemory(buf, StartMode.RECOVER)


def test_segment_and_directory_limits() -> None:
    buf, shm = fresh(HEADER_SIZE + 1000)
    with pytest.raises(SegmentFull, match="needs 1001 bytes"):
        shm.place("big", "Blob", 1001)
    shm.place("fits", "Blob", 1000)

    buf, shm = fresh(HEADER_SIZE + 64 * (MAX_ENTRIES + 1))
    for i in range(MAX_ENTRIES):
        shm.place(f"o{i}", "Blob", 1)
    with pytest.raises(SegmentFull, match="at most"):
        shm.place("one-too-many", "Blob", 1)


def test_names_are_checked() -> None:
    buf, shm = fresh()
    with pytest.raises(ValueError):
        shm.place("x" * 33, "Blob", 1)
    with pytest.raises(ValueError):
        shm.place("", "Blob", 1)


def _ready_buffer() -> bytearray:
    buf, shm = fresh()
    shm.place("in", "Blob", 100)
    shm.place("out", "Blob", 100)
    shm.mark_ready()
    shm.detach()
    return buf


@pytest.mark.parametrize(
    ("offset", "value", "reason"),
    [
        (0, b"GARBAGE!", "unknown magic"),
        (8, (99).to_bytes(8, "little"), "layout version 99"),
        (16, (12345).to_bytes(8, "little"), "records size 12345"),
        (32, b"\0" * 8, "never completed"),
        (40, (10**12).to_bytes(8, "little"), "claims 1000000000000 entries"),
        (64 + 48, (10**9).to_bytes(8, "little"), "outside"),  # entry 0 offset
        (64 + 56, (10**9).to_bytes(8, "little"), "outside"),  # entry 0 size
        (128 + 48, (HEADER_SIZE).to_bytes(8, "little"), "outside"),  # overlaps entry 0
        (128 + 48, (HEADER_SIZE + 129).to_bytes(8, "little"), "aligned"),
        (64, b"\xff\xfe" + b"\0" * 30, "not UTF-8"),
    ],
)
def test_corrupt_headers_are_named(offset: int, value: bytes, reason: str) -> None:
    buf = _ready_buffer()
    buf[offset : offset + len(value)] = value
    header = SegmentHeader(memoryview(buf))
    problem = header.problem()
    assert problem is not None and reason in problem
    with pytest.raises(CorruptSegment):
        SharedMemory(buf, StartMode.RECOVER)


def test_detached_segment_refuses_use() -> None:
    buf, shm = fresh()
    view = shm.place("in", "Blob", 10)
    shm.detach()
    with pytest.raises(Detached):
        shm.place("more", "Blob", 10)
    with pytest.raises(ValueError):
        view[0] = 1  # the view was released, not left dangling
    shm.detach()  # twice is harmless


def test_errors_survive_pickling() -> None:
    err = LayoutMismatch("changed", name="in", index=0, expected=1, found=2)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is LayoutMismatch
    assert (str(back), back.name, back.found) == ("changed", "in", 2)
    assert isinstance(back, ValueError)
