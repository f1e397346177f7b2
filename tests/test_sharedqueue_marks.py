"""Marks: a push and the number it records are one step, also across a SIGKILL
inside the lock (what a bus relay needs to apply each message exactly once)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from server.core.sharedring import CONTROL_SIZE, MARK_SLOTS, QueueControl
from server.errors import CorruptQueue
from server.ipc.sharedqueue import CRASH_POINTS, SharedQueue

pytestmark = pytest.mark.timeout(60)


def test_a_pending_mark_is_recorded_only_if_its_push_was_published() -> None:
    buf = bytearray(CONTROL_SIZE)
    ctl = QueueControl(memoryview(buf), 4096, 1234, init=True)
    ctl.mark_pending(3, 17, tail=500)
    assert ctl.settle_mark(tail=500) is True and ctl.mark(3) == 17  # the tail moved there
    ctl.mark_pending(3, 18, tail=600)
    assert ctl.settle_mark(tail=500) is False and ctl.mark(3) == 17  # it never did
    assert ctl.settle_mark(tail=500) is None  # nothing pending
    ctl.mark_pending(1, 5, tail=700)
    ctl.mark_published()
    assert ctl.mark(1) == 5 and ctl.settle_mark(700) is None
    with pytest.raises(ValueError, match="mark slot 32"):
        ctl.mark_pending(MARK_SLOTS, 1, 1)
    buf[80:88] = (MARK_SLOTS + 5).to_bytes(8, "little")  # a corrupt pending word
    with pytest.raises(CorruptQueue, match="pending mark slot"):
        QueueControl(memoryview(buf), 4096, 1234, init=False)


WRITER = """
from server.ipc.sharedqueue import SharedQueue
q = SharedQueue.open({key}, 4096)
assert q.push_many([b"1", b"2"], mark=(2, 1)) == 2
q.push_many([b"3", b"4", b"5"], mark=(2, 3))
"""


@pytest.mark.parametrize("point", [p for p in CRASH_POINTS if p.startswith("push.")])
def test_a_writer_killed_in_a_marked_push_leaves_mark_and_codes_agreeing(
    key: int, point: str
) -> None:
    with SharedQueue.open(key, 4096) as q:
        done = subprocess.run(
            [sys.executable, "-c", WRITER.format(key=key)],
            env=dict(os.environ, STCP_CRASH_AT=f"{point}:2"),  # in the second push
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert done.returncode == -9, done.stderr
        mark = q.mark(2)
        got = [int(c) for c in q.pop_many(10, timeout=0)]
        assert got == list(range(1, mark + 1))  # the mark says exactly what is there
        assert mark == (5 if point in ("push.published", "push.unlocking") else 2)
        assert q.mark(0) == 0  # other slots untouched


def test_marks_outlive_the_processes_and_count_partial_batches(key: int) -> None:
    with SharedQueue.open(key, 64) as q:  # room for few
        assert q.push_many([b"x" * 20] * 5, timeout=0, mark=(7, 100)) == 2
        assert q.mark(7) == 101  # the last one queued
    with SharedQueue.open(key, 64) as again:
        assert again.mark(7) == 101
