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
    offsets = [p.offset for p in shm.placements()]
    assert offsets[0] == HEADER_SIZE
    assert offsets[1] == HEADER_SIZE + 128  # 100 rounded up to 64
    assert offsets[2] == offsets[1] + 3392
    assert all(o % ALIGN == 0 for o in offsets)
    assert (len(a), len(b), len(c)) == (100, 3333, 1)
    assert all(p.done for p in shm.placements())


def test_recover_keeps_data_and_checks_the_same_layout() -> None:
    buf, shm = fresh()
    shm.place("in", "Blob", 100)[:5] = b"hello"
    shm.place("out", "Blob", 200)
    shm.detach()  # nothing to call before leaving (or being killed)

    again = SharedMemory(buf, StartMode.RECOVER)
    assert bytes(again.place("in", "Blob", 100)[:5]) == b"hello"
    again.place("out", "Blob", 200)
    again.check_all_placed()
    assert again.modes == {"in": StartMode.RECOVER, "out": StartMode.RECOVER}


@pytest.mark.parametrize(
    "second",
    [("out", "Blob", 201), ("other", "Blob", 200), ("out", "Queue", 200)],
)
def test_recover_refuses_another_layout(second: tuple[str, str, int]) -> None:
    buf, shm = fresh()
    shm.place("in", "Blob", 100)
    shm.place("out", "Blob", 200)
    shm.detach()
    again = SharedMemory(buf, StartMode.RECOVER)
    again.place("in", "Blob", 100)
    with pytest.raises(LayoutMismatch) as info:
        again.place(*second)
    assert "python -m server clean" in str(info.value)


def test_fewer_objects_are_found_by_the_check_more_are_added() -> None:
    buf, shm = fresh()
    shm.place("in", "Blob", 100)
    shm.place("out", "Blob", 100)
    shm.detach()
    fewer = SharedMemory(buf, StartMode.RECOVER)
    fewer.place("in", "Blob", 100)
    with pytest.raises(LayoutMismatch, match="holds 2 objects but this configuration placed 1"):
        fewer.check_all_placed()
    with pytest.warns(DeprecationWarning, match="no longer needed"), pytest.raises(LayoutMismatch):
        fewer.mark_ready()  # the old name still makes the check
    # An owner placing one more than recorded: a crash came before it was placed.
    more = SharedMemory(buf, StartMode.RECOVER)
    more.place("in", "Blob", 100)
    more.place("out", "Blob", 100)
    more.place("extra", "Blob", 100)
    assert more.modes["extra"] is StartMode.INIT and more.modes["out"] is StartMode.RECOVER
    assert [p.name for p in more.placements()] == ["in", "out", "extra"]
    # An observer (a worker joining) never adds or formats anything.
    watcher = SharedMemory(buf, StartMode.RECOVER, owner=False)
    for name in ("in", "out", "extra"):
        watcher.place(name, "Blob", 100)
    with pytest.raises(LayoutMismatch, match="holds only 3 objects"):
        watcher.place("more", "Blob", 100)


class Crash(Exception):
    """Stands for a SIGKILL inside an INIT: no code of the placer runs after it."""


def test_a_crash_inside_one_init_redoes_only_that_object() -> None:
    buf, shm = fresh()
    shm.place("in", "Blob", 100)[:4] = b"kept"
    with pytest.raises(Crash), shm.placing("half", "Blob", 100) as (region, mode):
        assert mode is StartMode.INIT
        region[:4] = b"torn"
        raise Crash
    assert [p.done for p in shm.placements()] == [True, False]
    shm.detach()

    watcher = SharedMemory(buf, StartMode.RECOVER, owner=False)
    watcher.place("in", "Blob", 100)
    with pytest.raises(CorruptSegment, match="'half' .* is not initialised"):
        watcher.place("half", "Blob", 100)
    watcher.detach()

    again = SharedMemory(buf, StartMode.RECOVER)
    assert bytes(again.place("in", "Blob", 100)[:4]) == b"kept"
    with again.placing("half", "Blob", 100) as (region, mode):
        assert mode is StartMode.INIT  # initialised again, from scratch
        assert bytes(region[:4]) == b"torn"  # (what the dead INIT left: to be overwritten)
        region[:4] = b"good"
    again.place("last", "Blob", 100)  # never placed before the crash
    assert again.modes == {"in": StartMode.RECOVER, "half": StartMode.INIT, "last": StartMode.INIT}
    assert all(p.done for p in again.placements())


def _program(shm: SharedMemory, crash_at: int | None) -> None:
    """Three objects, each initialised in two writes; ``crash_at`` counts the
    writes (into the objects or the directory) after which the process dies."""
    writes = 0

    def step() -> None:
        nonlocal writes
        if writes == crash_at:
            raise Crash
        writes += 1

    for i, name in enumerate(("a", "b", "c")):
        step()  # before this object: no directory entry yet
        with shm.placing(name, "Blob", 64) as (region, mode):
            if mode is StartMode.INIT:
                step()  # the entry is recorded, nothing initialised
                region[:8] = b"first %d " % i
                step()  # half initialised
                region[8:16] = b"second %d" % i
                step()  # initialised, DONE not yet written
        step()  # after the block: DONE


def test_a_crash_at_every_point_of_placing_recovers_the_same_segment() -> None:
    complete, shm = fresh(HEADER_SIZE + 3 * 64)
    _program(shm, None)
    points = 0
    while True:
        buf, shm = fresh(HEADER_SIZE + 3 * 64)
        try:
            _program(shm, points)
        except Crash:
            pass
        else:
            break
        crashed = bytearray(buf)  # the memory as the kill left it
        done_before = sum(p.done for p in SegmentHeader(memoryview(crashed)).placements())
        again = SharedMemory(crashed, StartMode.RECOVER)
        _program(again, None)
        modes = [again.modes[n] for n in "abc"]
        assert modes == [StartMode.RECOVER] * done_before + [StartMode.INIT] * (3 - done_before)
        assert crashed == complete, f"crash point {points}: not the segment a clean run makes"
        points += 1
    assert points == 15  # 5 crash points per object


def test_an_unfinished_header_is_not_recoverable() -> None:
    buf, shm = fresh()
    shm.place("in", "Blob", 100)
    buf[32:40] = bytes(8)  # as if killed while the header was written
    shm.detach()
    with pytest.raises(CorruptSegment, match="header's initialisation never completed"):
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
        shm.place("x" * 25, "Blob", 1)
    shm.place("x" * 24, "Blob", 1)
    with pytest.raises(ValueError):
        shm.place("", "Blob", 1)


def _ready_buffer() -> bytearray:
    buf, shm = fresh()
    shm.place("in", "Blob", 100)
    shm.place("out", "Blob", 100)
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
        (64 + 24, b"HALFDONE", "neither 0 nor DONE"),  # entry 0 state
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
