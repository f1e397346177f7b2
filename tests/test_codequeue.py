"""CodeQueue across real processes: order, batches, the doorbell."""

from __future__ import annotations

import os
import signal
import statistics
import time

from server import CodeQueue, CodeTooLarge, SharedMemory, SHMFactory, StartMode

SIZE = 1 << 20


def code(i: int) -> bytes:
    return (i.to_bytes(4, "little") * 64)[: 4 + (i * 7919) % 251]


def setup(key: int, *queues: tuple[str, int]) -> SharedMemory:
    shm = SHMFactory.create_product(key, SIZE)
    for name, capacity in queues:
        CodeQueue(shm, capacity, name)
    shm.detach()
    return SHMFactory.attach(key)


def _produce(key: int, count: int) -> None:
    shm = SHMFactory.attach(key)
    q = CodeQueue(shm, 3333, "q")
    q.recover_producer()
    i = 0
    while i < count:
        if i % 3 == 0:
            n = q.push_many(code(j) for j in range(i, min(i + 17, count)))
        else:
            n = 1 if q.push(code(i)) else 0
        i += n
        if not n:
            time.sleep(0)


def test_one_producer_one_consumer_across_processes(key: int, procs) -> None:  # type: ignore[no-untyped-def]
    shm = setup(key, ("q", 3333))
    q = CodeQueue(shm, 3333, "q")
    q.recover_consumer()
    count = 20_000
    p = procs.start(_produce, key, count)
    got = 0
    while got < count:
        assert q.wait(timeout=10), f"stalled after {got} codes"
        for c in q.pop_many(max_codes=50) if got % 2 else [q.pop()]:
            assert c == code(got), f"code {got} is wrong"
            got += 1
    p.join(10)
    s = q.stats()
    assert (s["pushed"], s["popped"], s["pending"]) == (count, count, 0)
    shm.detach()


def _echo(key: int) -> None:
    shm = SHMFactory.attach(key)
    inbound, outbound = CodeQueue(shm, 4096, "in"), CodeQueue(shm, 4096, "out")
    inbound.recover_consumer()
    outbound.recover_producer()
    while True:
        inbound.wait(spin=0)  # really sleep on the doorbell every time
        while (c := inbound.pop()) is not None:
            outbound.push(c)


def test_a_sleeping_consumer_wakes_within_a_millisecond(key: int, procs) -> None:  # type: ignore[no-untyped-def]
    shm = setup(key, ("in", 4096), ("out", 4096))
    inbound, outbound = CodeQueue(shm, 4096, "in"), CodeQueue(shm, 4096, "out")
    outbound.recover_consumer()
    procs.start(_echo, key)
    rtts = []
    for i in range(60):
        time.sleep(0.005)  # let the echo process fall asleep
        t0 = time.perf_counter()
        inbound.push(b"ping %d" % i)
        assert outbound.wait(timeout=5, spin=0)
        rtts.append(time.perf_counter() - t0)
        assert outbound.pop() == b"ping %d" % i
    # two wake-ups per round trip: the echo process's and ours
    assert statistics.median(rtts) < 2e-3, f"median round trip {statistics.median(rtts):.6f}s"
    shm.detach()


def test_an_idle_consumer_does_not_burn_cpu(key: int) -> None:
    shm = setup(key, ("q", 4096))
    q = CodeQueue(shm, 4096, "q")
    cpu = time.process_time()
    wall = time.monotonic()
    assert not q.wait(timeout=1.5)
    assert time.monotonic() - wall >= 1.5
    assert time.process_time() - cpu < 0.1
    shm.detach()


def _sleep_forever(key: int) -> None:
    shm = SHMFactory.attach(key)
    q = CodeQueue(shm, 4096, "q")
    q.recover_consumer()
    q.wait()


def test_a_killed_sleeper_does_not_stall_the_next_consumer(key: int, procs) -> None:  # type: ignore[no-untyped-def]
    shm = setup(key, ("q", 4096))
    q = CodeQueue(shm, 4096, "q")
    p = procs.start(_sleep_forever, key)
    deadline = time.monotonic() + 5
    while not q._ring.sleeping and time.monotonic() < deadline:
        time.sleep(0.001)
    assert q._ring.sleeping
    os.kill(p.pid, signal.SIGKILL)
    p.join(5)
    assert q.push(b"to nobody")  # the doorbell has no listener: no error
    assert q._ring.sleeping  # the flag the dead sleeper left
    q.recover_consumer()
    assert not q._ring.sleeping
    t0 = time.monotonic()
    assert q.wait(timeout=2)
    assert q.pop() == b"to nobody"
    q.push(b"more")
    assert q.wait(timeout=2) and time.monotonic() - t0 < 0.5
    shm.detach()


def test_two_consumers_cannot_share_a_doorbell(key: int) -> None:
    shm = setup(key, ("q", 4096))
    a = CodeQueue(shm, 4096, "q")
    other = SHMFactory.attach(key)
    b = CodeQueue(other, 4096, "q")
    a.fileno()
    try:
        b.fileno()
    except OSError as err:
        assert "another consumer" in str(err)
    else:
        raise AssertionError("a second consumer bound the same doorbell")
    other.detach()
    shm.detach()


def test_a_code_too_large_names_both_sizes(key: int) -> None:
    shm = SharedMemory(bytearray(8192), StartMode.INIT)
    q = CodeQueue(shm, 100, "q")
    try:
        q.push(b"x" * 200)
    except CodeTooLarge as err:
        assert "200 bytes" in str(err) and "100 bytes" in str(err)
    else:
        raise AssertionError("no error")
