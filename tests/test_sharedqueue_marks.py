"""What a bus relay needs from a SharedQueue, also across a SIGKILL inside the
lock: marks (a push and the number it records are one step: each message
applied exactly once) and peek + commit (a message leaves its outbox only
when the other host applied it)."""

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


def test_peek_takes_nothing_and_commit_takes_exactly_what_was_peeked(key: int) -> None:
    with SharedQueue.open(key, 4096) as q:
        q.push_many([b"a", b"bb", b"ccc"])
        first, end1 = q.peek(2)
        assert first == [b"a", b"bb"] and len(q) == 3
        rest, end2 = q.peek(10, start=end1)
        assert rest == [b"ccc"]
        assert q.peek(10, start=end2) == ([], end2)  # nothing more (yet)
        q.push(b"dddd")  # a writer goes on: the positions stay valid
        assert q.commit(end1) == 2
        assert len(q) == 2 and q.taken() == 2
        assert q.peek(10)[0] == [b"ccc", b"dddd"]
        with pytest.raises(CorruptQueue, match="record boundary"):
            q.commit(end2 + 1)  # inside a record: refused, nothing taken
        assert len(q) == 2 and q.commit(end2) == 1 and q.pop(timeout=0) == b"dddd"


COMMITTER = """
from server.ipc.sharedqueue import SharedQueue
q = SharedQueue.open({key}, 4096)
codes, end = q.peek(10)
q.commit(end)
"""


@pytest.mark.parametrize("point", ["pop.counted", "pop.published", "pop.unlocking:2"])
def test_a_reader_killed_in_a_commit_takes_all_or_nothing(key: int, point: str) -> None:
    with SharedQueue.open(key, 4096) as q:
        q.push_many([b"1", b"2", b"3"])
        done = subprocess.run(
            [sys.executable, "-c", COMMITTER.format(key=key)],
            env=dict(os.environ, STCP_CRASH_AT=point),  # unlocking:2 is the commit's
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert done.returncode == -9, done.stderr
        taken = point != "pop.counted"
        assert q.pop_many(10, timeout=0) == ([] if taken else [b"1", b"2", b"3"])
        assert q.taken() == 3 and q.stats()["pushed"] == 3  # the counts exact either way
