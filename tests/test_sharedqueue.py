"""SharedQueue: many unrelated processes, a lock the kernel gives back.

The control block's rules on a plain bytearray; the queue in one process;
then real processes started as programs of their own, killed with a real
SIGKILL at the crash points inside the lock (``STCP_CRASH_AT``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from server.core.sharedring import CONTROL_SIZE, POP, PUSH, QueueControl
from server.errors import ConfigError, CorruptQueue
from server.ipc.sharedqueue import CRASH_POINTS, SharedQueue

pytestmark = pytest.mark.timeout(60)


# -- the control block (pure) ------------------------------------------------------------
def control(init: bool = True, buf: bytearray | None = None) -> tuple[QueueControl, bytearray]:
    buf = buf if buf is not None else bytearray(CONTROL_SIZE)
    return QueueControl(memoryview(buf), 4096, 1234, init=init), buf


def test_a_holder_that_died_inside_is_reported_once() -> None:
    ctl, _ = control()
    assert ctl.begin(PUSH, 100) == 0
    # pid 100 dies holding the lock: it never calls end()
    assert ctl.begin(PUSH, 200) == 100
    assert ctl.repairs(PUSH) == 1
    ctl.end(PUSH)
    assert ctl.begin(PUSH, 300) == 0
    assert ctl.holder(POP) == 0


def test_sleepers_are_rung_once_per_sleep() -> None:
    ctl, _ = control()
    ctl.fall_asleep(POP, 3)
    ctl.fall_asleep(POP, 63)
    rung: dict[int, int] = {}
    assert list(ctl.to_ring(ctl.sleepers(POP), rung)) == [3, 63]
    assert list(ctl.to_ring(ctl.sleepers(POP), rung)) == []  # same sleep: not again
    ctl.wake_up(POP, 3)
    ctl.fall_asleep(POP, 3)  # a new sleep
    assert list(ctl.to_ring(ctl.sleepers(POP), rung)) == [3]
    assert ctl.sleepers(PUSH) == 0


class _Watched:
    """Words that let a waker look after every single store."""

    def __init__(self, words: memoryview, look: object) -> None:
        self.words, self.look = words, look

    def __getitem__(self, i: int) -> int:
        return int(self.words[i])

    def __setitem__(self, i: int, value: int) -> None:
        self.words[i] = value
        self.look()  # type: ignore[operator]

    def __len__(self) -> int:
        return len(self.words)


def test_a_waker_between_any_two_stores_of_a_sleep_never_skips_it() -> None:
    ctl, _ = control()
    rung: dict[int, int] = {}
    ctl.fall_asleep(POP, 3)
    assert list(ctl.to_ring(ctl.sleepers(POP), rung)) == [3]  # the first sleep, rung
    ctl.wake_up(POP, 3)
    missed = []

    def look() -> None:  # a waker that reads the block right now
        mask = ctl.sleepers(POP)
        if mask and not list(ctl.to_ring(mask, dict(rung))):
            missed.append(mask)

    ctl._w = _Watched(ctl._w, look)  # type: ignore[assignment]
    ctl.fall_asleep(POP, 3)  # the second sleep
    assert missed == [], "a waker saw the bit with the seq of the sleep it had rung"


def test_claiming_a_dead_slot_clears_its_bits() -> None:
    ctl, _ = control()
    assert ctl.claim_slot(10, lambda pid: True) == 0
    ctl.fall_asleep(POP, 0)
    assert ctl.claim_slot(11, lambda pid: pid != 10) == 0  # 10 is gone
    assert ctl.sleepers(POP) == 0
    assert ctl.slot_pid(0) == 11


def test_recovery_checks_what_it_reads() -> None:
    ctl, buf = control()
    ctl.release()
    control(init=False, buf=buf)[0].release()  # intact
    bad = bytearray(buf)
    bad[64:72] = (1 << 40).to_bytes(8, "little")  # push holder: no such pid
    with pytest.raises(CorruptQueue, match="push lock holder"):
        control(init=False, buf=bad)
    with pytest.raises(CorruptQueue, match="pop lock key"):
        QueueControl(memoryview(bytearray(buf)), 4096, 999, init=False)


# -- one process ------------------------------------------------------------------------------
def test_push_pop_in_order_with_timeouts(key: int) -> None:
    with SharedQueue.open(key, 3333) as q:
        assert q.push(b"one") and q.push_many([b"two", b"three"]) == 2
        assert len(q) == 3
        assert q.pop() == b"one" and q.pop_many(10) == [b"two", b"three"]
        start = time.monotonic()
        assert q.pop(timeout=0.1) is None
        assert 0.09 < time.monotonic() - start < 1.0
        n = 0
        while q.push(b"x" * 100, timeout=0):
            n += 1
        assert n == 3333 // 104
        assert q.push(b"x" * 100, timeout=0.05) is False
        assert q.stats()["pending"] == n
    assert SharedQueue.remove(key)
    assert not SharedQueue.remove(key)


def test_another_capacity_is_refused_while_codes_wait(key: int) -> None:
    with SharedQueue.open(key, 4096) as q:
        q.push(b"kept")
    with pytest.raises(ConfigError, match="capacity 4096 and holds 1 code"):
        SharedQueue.open(key, 8192)
    with SharedQueue.open(key, 4096) as q:
        assert q.pop() == b"kept"
    with SharedQueue.open(key, 8192) as q:  # empty: re-made
        assert q.capacity == 8192


# -- real processes, real SIGKILLs ----------------------------------------------------------------
def run(
    key: int, code: str, crash: str = "", timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, STCP_CRASH_AT=crash)
    prog = f"from server.ipc.sharedqueue import SharedQueue\nq = SharedQueue.open({key}, 4096)\n"
    return subprocess.run(
        [sys.executable, "-c", prog + textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("point", [p for p in CRASH_POINTS if p.startswith("push.")])
def test_a_writer_killed_inside_the_lock_hurts_nobody(key: int, point: str) -> None:
    with SharedQueue.open(key, 4096) as q:
        q.push(b"before")
        done = run(key, "q.push(b'victim')", crash=point)
        assert done.returncode == -9, done.stderr
        start = time.monotonic()
        assert q.push(b"after", timeout=1)  # the kernel gave the lock back
        assert time.monotonic() - start < 0.5
        got = q.pop_many(10, timeout=0)
        published = point in ("push.published", "push.unlocking")
        assert got == ([b"before", b"victim", b"after"] if published else [b"before", b"after"])
        s = q.stats()
        assert s["pushed"] == len(got) + 0 and s["pending"] == 0  # counts exact, nothing torn
        assert s["repairs"]["push"] == (0 if point == "push.unlocking" else 1)


def test_a_writer_killed_while_copying_into_a_full_queue_leaves_it_whole(key: int) -> None:
    with SharedQueue.open(key, 4096) as q:
        codes = [b"%04d" % i * 25 for i in range(100)]
        pushed = []
        for code in codes:
            if not q.push(code, timeout=0):
                break
            pushed.append(code)
        done = run(key, "q.push(b'v' * 100, timeout=0)", crash="push.copying")
        assert done.returncode == -9, done.stderr
        assert q.pop_many(1000, timeout=0) == pushed  # no byte of theirs overwritten


@pytest.mark.parametrize("point", [p for p in CRASH_POINTS if p.startswith("pop.")])
def test_a_reader_killed_inside_the_lock_leaves_its_code(key: int, point: str) -> None:
    with SharedQueue.open(key, 4096) as q:
        q.push_many([b"a", b"b"])
        done = run(key, "q.pop()", crash=point)
        assert done.returncode == -9, done.stderr
        taken = point in ("pop.published", "pop.unlocking")
        assert q.pop_many(10, timeout=1) == ([b"b"] if taken else [b"a", b"b"])
        assert q.stats()["pending"] == 0


def test_a_sleeping_reader_wakes_within_milliseconds(key: int) -> None:
    with SharedQueue.open(key, 4096) as q:
        reader = subprocess.Popen(
            [
                sys.executable,
                "-c",
                f"import time\nfrom server.ipc.sharedqueue import SharedQueue\n"
                f"q = SharedQueue.open({key}, 4096)\nprint('ready', flush=True)\n"
                f"code = q.pop(timeout=10)\nprint(code, time.monotonic(), flush=True)\n",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert reader.stdout is not None
            assert reader.stdout.readline().strip() == "ready"
            time.sleep(0.3)  # well asleep, far from its safety wake
            sent = time.monotonic()
            q.push(b"wake")
            line = reader.stdout.readline().split()
            assert line[0] == "b'wake'"
            assert float(line[1]) - sent < 0.05
        finally:
            reader.kill()
            reader.wait()


WAITER = """
import sys, time
from server.ipc.sharedqueue import SharedQueue
key, role = int(sys.argv[1]), sys.argv[2]
q = SharedQueue.open(key, 4096)
print("ready", flush=True)
ok = q.pop(timeout=10) is not None if role == "reader" else q.push(b"w" * 1000, timeout=10)
print(ok, time.monotonic(), flush=True)
q.close()
"""


def _waiters(key: int, role: str, n: int) -> list[subprocess.Popen[str]]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WAITER, str(key), role], stdout=subprocess.PIPE, text=True
        )
        for _ in range(n)
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return procs


def _woken_after(procs: list[subprocess.Popen[str]], since: float) -> list[float]:
    delays = []
    for p in procs:
        assert p.stdout is not None
        ok, when = p.stdout.readline().split()
        assert ok == "True"
        delays.append(float(when) - since)
        p.wait(10)
    return delays


def test_many_sleepers_on_both_sides_each_wake_at_their_event(key: int) -> None:
    with SharedQueue.open(key, 4096) as q:
        readers = _waiters(key, "reader", 4)
        try:
            time.sleep(0.3)  # all asleep, between safety wakes
            sent = time.monotonic()
            assert q.push_many([b"one", b"two", b"three", b"four"]) == 4
            assert max(_woken_after(readers, sent)) < 0.05
            while q.push(b"f" * 1000, timeout=0):  # full now
                pass
            writers = _waiters(key, "writer", 3)
            time.sleep(0.3)
            freed = time.monotonic()
            assert len(q.pop_many(3)) == 3  # room for the three of them
            assert max(_woken_after(writers, freed)) < 0.05
        finally:
            for p in readers + locals().get("writers", []):
                p.kill()
                p.wait()


def test_what_comes_while_falling_asleep_is_taken_at_once(key: int) -> None:
    """A code published between a reader's last look and its mark (so
    nobody rings it), or room freed just so, must not cost a sleep."""
    with SharedQueue.open(key, 4096) as q:
        for side, arrive, wait in (
            (POP, lambda: q.push(b"just now"), lambda: q.pop(timeout=5)),
            (PUSH, lambda: q.pop(), lambda: q.push(b"r" * 1000, timeout=5)),
        ):
            if side == PUSH:
                while q.push(b"r" * 1000, timeout=0):  # full
                    pass
            fall_asleep = q._ctl.fall_asleep

            def arriving(s: int, slot: int, arrive=arrive, original=fall_asleep) -> None:  # type: ignore[no-untyped-def]
                q._ctl.fall_asleep = original  # type: ignore[method-assign]
                arrive()  # before the bit is set: no ring for us
                original(s, slot)

            q._ctl.fall_asleep = arriving  # type: ignore[method-assign]
            start = time.monotonic()
            assert wait()
            assert time.monotonic() - start < 0.1  # not a safety wake-up (0.25 s)
            assert q._ctl.fall_asleep == fall_asleep  # it did fall asleep once


def test_unknown_crash_point_is_an_error(key: int) -> None:
    done = run(key, "pass", crash="push.nowhere")
    assert done.returncode == 1 and "no crash point 'push.nowhere'" in done.stderr


def test_clean_removes_the_queue_and_both_locks(key: int) -> None:
    import sysv_ipc

    from server.ipc.semlock import lock_exists, pop_lock_key

    with SharedQueue.open(key, 4096) as q:
        q.push(b"x")
    assert lock_exists(key) and lock_exists(pop_lock_key(key))
    done = subprocess.run(
        [sys.executable, "-m", "server", "clean", "--key", hex(key)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert not lock_exists(key) and not lock_exists(pop_lock_key(key))
    with pytest.raises(sysv_ipc.ExistentialError):
        sysv_ipc.SharedMemory(key, 0)
