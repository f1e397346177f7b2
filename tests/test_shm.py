"""SHMFactory against real System V segments."""

from __future__ import annotations

import logging
import os
import signal
import time

import pytest
import sysv_ipc

from server import (
    CodeQueue,
    CorruptQueue,
    SegmentError,
    SegmentInUse,
    SegmentPermissionError,
    SHMFactory,
    StartMode,
)

SIZE = 64 * 1024


def _hold(key: int, seconds: float) -> None:
    seg = sysv_ipc.SharedMemory(key, 0)
    time.sleep(seconds)
    seg.detach()


def attached_elsewhere(procs, key: int) -> None:  # type: ignore[no-untyped-def]
    """Start a process that stays attached to ``key``.

    We must not be attached while it forks: the child would inherit our
    mapping, and count twice."""
    procs.start(_hold, key, 30)
    deadline = time.monotonic() + 5
    while SHMFactory.attached_elsewhere(key) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)


def make_ready(key: int, size: int = SIZE) -> None:
    with SHMFactory.create_product(key, size) as shm:
        q = CodeQueue(shm, 1000, "in")
        q.push(b"pending")


def test_init_then_recover(key: int) -> None:
    shm = SHMFactory.create_product(key, SIZE)
    assert shm.start_mode is StartMode.INIT
    assert shm.generation == 1
    assert shm.stat()["mode"] == "0600"
    q = CodeQueue(shm, 1000, "in")
    q.push(b"survives")
    shm.detach()

    shm = SHMFactory.create_product(key, SIZE)
    assert shm.start_mode is StartMode.RECOVER
    assert shm.generation == 2
    assert CodeQueue(shm, 1000, "in").pop() == b"survives"
    shm.detach()
    assert SHMFactory.remove(key)
    assert not SHMFactory.exists(key)
    assert not SHMFactory.remove(key)


@pytest.mark.parametrize("new_size", [SIZE // 2, SIZE * 2])
def test_another_size_is_recreated_with_a_warning(key: int, new_size: int, caplog) -> None:  # type: ignore[no-untyped-def]
    make_ready(key)
    with caplog.at_level(logging.WARNING), SHMFactory.create_product(key, new_size) as shm:
        assert shm.start_mode is StartMode.INIT
        assert shm.size == new_size
    assert f"has {SIZE} bytes but this configuration needs {new_size}" in caplog.text


def test_another_size_is_refused_while_others_are_attached(key: int, procs) -> None:  # type: ignore[no-untyped-def]
    make_ready(key)
    attached_elsewhere(procs, key)
    with pytest.raises(SegmentInUse) as info:
        SHMFactory.create_product(key, SIZE * 2)
    assert info.value.attached == 1
    assert "stop them first" in str(info.value)
    with pytest.raises(SegmentInUse):
        SHMFactory.remove(key)
    # the segment was left alone
    with SHMFactory.create_product(key, SIZE) as shm:
        assert shm.start_mode is StartMode.RECOVER


def test_a_changed_layout_is_recreated_when_announced(key: int, caplog) -> None:  # type: ignore[no-untyped-def]
    make_ready(key)
    layout = [("in", CodeQueue.KIND, CodeQueue.region_size(2000))]
    with caplog.at_level(logging.WARNING), SHMFactory.create_product(key, SIZE, layout) as shm:
        assert shm.start_mode is StartMode.INIT
    assert "the layout changed" in caplog.text
    same = [("in", CodeQueue.KIND, CodeQueue.region_size(1000))]
    make_ready(key)
    with SHMFactory.create_product(key, SIZE, same) as shm:
        assert shm.start_mode is StartMode.RECOVER


def _producer_then_hang(key: int, count: int, ready) -> None:  # type: ignore[no-untyped-def]
    shm = SHMFactory.create_product(key, SIZE)
    q = CodeQueue(shm, 1000, "in")
    for i in range(count):
        assert q.push(b"code %d" % i)
    ready.send(b"pushed")  # and no other call: SIGKILL comes next
    time.sleep(60)


def test_a_producer_killed_before_any_extra_call_leaves_codes_to_pop(key: int, procs) -> None:  # type: ignore[no-untyped-def]
    import multiprocessing

    mine, theirs = multiprocessing.Pipe()
    child = procs.start(_producer_then_hang, key, 20, theirs)
    assert mine.poll(10) and mine.recv() == b"pushed"
    os.kill(child.pid, signal.SIGKILL)
    child.join(5)
    assert child.exitcode == -signal.SIGKILL
    with SHMFactory.create_product(key, SIZE) as shm:
        assert shm.start_mode is StartMode.RECOVER
        q = CodeQueue(shm, 1000, "in")
        assert shm.modes == {"in": StartMode.RECOVER}
        assert q.pop_many() == [b"code %d" % i for i in range(20)]


def _killed_inside_the_second_init(key: int) -> None:
    shm = SHMFactory.create_product(key, SIZE)
    CodeQueue(shm, 1000, "in").push(b"kept")
    with shm.placing("out", CodeQueue.KIND, CodeQueue.region_size(1000)) as (region, _mode):
        region[:8] = b"half-way"
        os.kill(os.getpid(), signal.SIGKILL)


def test_a_kill_inside_one_placement_reinitialises_only_that_one(key: int, procs, caplog) -> None:  # type: ignore[no-untyped-def]
    child = procs.start(_killed_inside_the_second_init, key)
    child.join(10)
    assert child.exitcode == -signal.SIGKILL
    attached_elsewhere(procs, key)
    with pytest.raises(SegmentInUse, match="'out' .* one may be initialising it"):
        _place_both(key)
    procs.kill_all()
    with caplog.at_level(logging.WARNING):
        shm, inbound, outbound = _place_both(key)
    with shm:
        assert shm.start_mode is StartMode.RECOVER
        assert shm.modes == {"in": StartMode.RECOVER, "out": StartMode.INIT}
        assert inbound.pop() == b"kept" and outbound.pop() is None
    assert "initialising CodeQueue 'out' again (its initialisation never finished)" in caplog.text


def _place_both(key: int):  # type: ignore[no-untyped-def]
    shm = SHMFactory.create_product(key, SIZE)
    try:
        return shm, CodeQueue(shm, 1000, "in"), CodeQueue(shm, 1000, "out")
    except BaseException:
        shm.detach()
        raise


def test_a_corrupt_header_is_reinitialised_or_refused(key: int, procs, caplog) -> None:  # type: ignore[no-untyped-def]
    make_ready(key)
    seg = sysv_ipc.SharedMemory(key, 0)
    seg.write(b"\xde\xad\xbe\xef" * 2, 0)
    seg.detach()
    attached_elsewhere(procs, key)
    with pytest.raises(SegmentInUse, match="unknown magic"):
        SHMFactory.create_product(key, SIZE)
    procs.kill_all()
    with caplog.at_level(logging.WARNING), SHMFactory.create_product(key, SIZE) as shm:
        assert shm.start_mode is StartMode.INIT
    assert "re-initialising" in caplog.text and "unknown magic" in caplog.text


def test_open_permissions_are_refused(key: int) -> None:
    seg = sysv_ipc.SharedMemory(key, sysv_ipc.IPC_CREX, mode=0o666, size=SIZE)
    seg.detach()
    with pytest.raises(SegmentPermissionError, match="mode 0666") as info:
        SHMFactory.create_product(key, SIZE)
    assert info.value.found == 0o666
    with pytest.raises(SegmentPermissionError):
        SHMFactory.attach(key)


def _create_as(uid: int, key: int) -> None:
    os.setuid(uid)
    sysv_ipc.SharedMemory(key, sysv_ipc.IPC_CREX, mode=0o600, size=SIZE).detach()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a segment as another user")
def test_another_users_segment_is_refused(key: int, procs) -> None:  # type: ignore[no-untyped-def]
    p = procs.start(_create_as, 65534, key)
    p.join(10)
    assert p.exitcode == 0
    with pytest.raises(SegmentPermissionError, match="belongs to uid 65534"):
        SHMFactory.create_product(key, SIZE)


def test_attach_needs_a_ready_segment(key: int) -> None:
    with pytest.raises(SegmentError, match="is the server running"):
        SHMFactory.attach(key)
    make_ready(key)
    with SHMFactory.attach(key) as shm:
        assert shm.start_mode is StartMode.RECOVER
        assert shm.generation == 1  # attaching is not a start
        assert CodeQueue(shm, 1000, "in").pop() == b"pending"


def test_a_segment_too_small_for_a_header_is_refused(key: int) -> None:
    with pytest.raises(ValueError, match="at least 4096"):
        SHMFactory.create_product(key, 100)


def test_a_corrupt_length_in_a_real_segment_is_named(key: int) -> None:
    make_ready(key)
    seg = sysv_ipc.SharedMemory(key, 0)
    seg.write((10**6).to_bytes(4, "little"), 4096 + 256)  # the pending record's length
    seg.detach()
    with SHMFactory.create_product(key, SIZE) as shm:
        assert shm.start_mode is StartMode.RECOVER
        with pytest.raises(CorruptQueue, match="record length") as info:
            CodeQueue(shm, 1000, "in")
        assert info.value.found == 10**6
        assert "python -m server clean" in str(info.value)
