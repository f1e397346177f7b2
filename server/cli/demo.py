"""``python -m server demo``: pending codes survive a ``kill -9``, in six lines.

1. create a segment (INIT) and a queue in it;
2. a child process pushes codes that nobody consumes;
3. ``kill -9`` the child: the process is gone, the segment stays;
4. start again: the same key now gives RECOVER;
5. every code is still there, in order;
6. remove the segment.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time

from ..ipc.codequeue import CodeQueue
from ..ipc.shm import SHMFactory

DEMO_CAPACITY = 64 * 1024
DEMO_SIZE = 128 * 1024


def _demo_producer(key: int, count: int) -> None:
    with SHMFactory.attach(key) as shm:
        q = CodeQueue(shm, DEMO_CAPACITY, "inbound")
        q.recover_producer()
        for i in range(count):
            while not q.push(f"request #{i}".encode()):
                time.sleep(0.001)
        time.sleep(3600)  # wait to be killed, like a busy process would


def run_demo(key: int | None, codes: int) -> bool:
    """Returns whether every code came back, in order."""
    key = key or random.randint(0x1000_0000, 0x7FFF_FFFF)
    say = print
    try:
        shm = SHMFactory.create_product(key, DEMO_SIZE)
        say(f"1. start: segment 0x{key:08x} -> start mode {shm.start_mode.name}")
        CodeQueue(shm, DEMO_CAPACITY, "inbound")
        shm.detach()

        child = multiprocessing.get_context("fork").Process(
            target=_demo_producer, args=(key, codes), daemon=True
        )
        child.start()
        with SHMFactory.attach(key) as shm:
            q = CodeQueue(shm, DEMO_CAPACITY, "inbound")
            deadline = time.monotonic() + 10
            while len(q) < codes and time.monotonic() < deadline:
                time.sleep(0.01)
            say(f"2. producer pid {child.pid} pushed {len(q)} codes; nobody consumed them")
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join(5)
        say(
            f"3. kill -9 {child.pid}: the process is gone (exit {child.exitcode}), the segment stays"
        )

        shm = SHMFactory.create_product(key, DEMO_SIZE)
        say(
            f"4. start again: segment 0x{key:08x} -> start mode {shm.start_mode.name} (generation {shm.generation})"
        )
        q = CodeQueue(shm, DEMO_CAPACITY, "inbound")
        q.recover_consumer()
        found = q.pop_many(max_bytes=1 << 30)
        ok = found == [f"request #{i}".encode() for i in range(codes)]
        say(
            f"5. found {len(found)} pending codes, first {found[0]!r}, last {found[-1]!r}: "
            f"{'all there, in order' if ok else 'NOT what was pushed'}"
        )
        shm.detach()
        return ok
    finally:
        if SHMFactory.remove(key):
            say(f"6. removed segment 0x{key:08x}")
