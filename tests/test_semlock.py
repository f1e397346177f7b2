"""SemLock: a try never waits, a wait is bounded, a dead holder's lock comes back.

Another process holds the lock in each test: a process's own second
``semop(-1)`` on a value-0 semaphore blocks just as another's would.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from server.ipc.semlock import SemLock

pytestmark = pytest.mark.timeout(20)


def _hold(key: int, ready_w: int) -> None:
    lock, _ = SemLock.open(key, "test lock")
    assert lock.try_acquire()
    os.write(ready_w, b"!")
    time.sleep(60)  # killed by the test


@pytest.fixture
def held(key: int):  # type: ignore[no-untyped-def]
    """The lock ``key``, held by a child that sleeps; yields (lock, child pid)."""
    lock, created = SemLock.open(key, "test lock")
    assert created
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            _hold(key, w)
        finally:
            os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"!"
    os.close(r)
    try:
        yield lock, pid
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def test_a_try_on_a_held_lock_returns_at_once(held) -> None:  # type: ignore[no-untyped-def]
    lock, _ = held
    start = time.monotonic()
    assert not lock.try_acquire()
    assert not lock.acquire(0)
    assert time.monotonic() - start < 0.5


def test_a_wait_ends_at_its_timeout(held) -> None:  # type: ignore[no-untyped-def]
    lock, _ = held
    start = time.monotonic()
    assert not lock.acquire(0.3)
    assert 0.25 < time.monotonic() - start < 2.0
    assert not lock.free
    assert lock.max_wait >= 0.25


def test_the_kernel_gives_a_killed_holders_lock_back(held) -> None:  # type: ignore[no-untyped-def]
    lock, pid = held
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    start = time.monotonic()
    assert lock.acquire(5)
    assert time.monotonic() - start < 1.0
    lock.release()
    assert lock.free
