"""Crash tests: a real SIGKILL at random moments, many times.

After each kill the queue must hold exactly what was published, in order,
with no torn and no duplicated record, and the code counters must agree once
the next process of that side has called its ``recover_*``.
"""

from __future__ import annotations

import os
import random
import signal
import struct
import tempfile
import time

from server import CodeQueue, SHMFactory

SIZE = 1 << 16
CAPACITY = 3333  # odd, so records wrap at every offset over time
ROUNDS = 40


def code(i: int) -> bytes:
    """Sequence number i, checkable from any torn or shifted copy."""
    return (i.to_bytes(4, "little") * 80)[: 4 + (i * 7919) % 300]


def check(c: bytes, expected: int) -> None:
    seq = int.from_bytes(c[:4], "little")
    assert seq == expected, f"got code {seq}, expected {expected}"
    assert c == code(seq), f"code {seq} is torn"


def make_queue(key: int) -> None:
    shm = SHMFactory.create_product(key, SIZE)
    CodeQueue(shm, CAPACITY, "q")
    shm.detach()


def _producer(key: int, start: int) -> None:
    shm = SHMFactory.attach(key)
    q = CodeQueue(shm, CAPACITY, "q")
    q.recover_producer()
    i = start
    while True:
        if i % 5:
            i += 1 if q.push(code(i)) else 0
        else:
            i += q.push_many([code(j) for j in range(i, i + 7)])


def test_producer_killed_at_random_moments(key: int, procs) -> None:  # type: ignore[no-untyped-def]
    rnd = random.Random()
    make_queue(key)
    shm = SHMFactory.attach(key)
    q = CodeQueue(shm, CAPACITY, "q")
    expected = 0
    for _ in range(ROUNDS):
        p = procs.start(_producer, key, expected)
        deadline = time.monotonic() + rnd.uniform(0.005, 0.04)
        while time.monotonic() < deadline:  # consume while it produces
            for c in q.pop_many(max_codes=rnd.randint(1, 20)):
                check(c, expected)
                expected += 1
        os.kill(p.pid, signal.SIGKILL)
        p.join(5)
        for c in q.pop_many(max_bytes=1 << 30):  # what was published before the kill
            check(c, expected)
            expected += 1
        assert q.empty()
    assert expected > ROUNDS * 10, "the producer hardly ran: the test proves nothing"
    q.recover_producer()  # take over the dead producer's side
    s = q.stats()
    assert (s["pushed"], s["popped"], s["pending"]) == (expected, expected, 0)
    shm.detach()


def _consumer(key: int, log_path: str) -> None:
    shm = SHMFactory.attach(key)
    q = CodeQueue(shm, CAPACITY, "q")
    q.recover_consumer()
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND)
    pack = struct.Struct("<I").pack
    while True:
        if not q.wait(timeout=1, spin=0):
            continue
        batch = q.pop_many(max_codes=random.randint(1, 9)) if random.random() < 0.5 else [q.pop()]
        # popped first, logged after: a kill in between loses the log line,
        # never the queue's consistency
        os.write(fd, b"".join(pack(int.from_bytes(c[:4], "little")) for c in batch if c))
        for c in batch:
            assert c == code(int.from_bytes(c[:4], "little"))


def test_consumer_killed_at_random_moments(key: int, procs) -> None:  # type: ignore[no-untyped-def]
    rnd = random.Random()
    make_queue(key)
    shm = SHMFactory.attach(key)
    q = CodeQueue(shm, CAPACITY, "q")
    q.recover_producer()
    pushed = 0
    consumed = 0  # everything before this was popped by some consumer
    unlogged = 0
    with tempfile.NamedTemporaryFile() as log:
        for _ in range(ROUNDS):
            log.truncate(0)
            p = procs.start(_consumer, key, log.name)
            deadline = time.monotonic() + rnd.uniform(0.005, 0.04)
            while time.monotonic() < deadline:
                if q.push(code(pushed)):
                    pushed += 1
            os.kill(p.pid, signal.SIGKILL)
            p.join(5)
            with open(log.name, "rb") as f:
                raw = f.read()
            logged = struct.unpack(f"<{len(raw) // 4}I", raw)
            assert list(logged) == list(range(consumed, consumed + len(logged))), (
                "out of order or duplicated"
            )
            head = q.peek()
            next_seq = pushed if head is None else int.from_bytes(head[:4], "little")
            if head is not None:
                check(head, next_seq)
            # the queue resumes right after what was logged, or one batch
            # later: the batch popped in the instant between the head store
            # and the log write (at most 9 codes)
            assert 0 <= next_seq - (consumed + len(logged)) <= 9
            unlogged += next_seq - (consumed + len(logged))
            consumed = next_seq
    q.recover_consumer()  # take over the dead consumer's side
    rest = q.pop_many(max_bytes=1 << 30)
    for i, c in enumerate(rest):
        check(c, consumed + i)
    s = q.stats()
    assert (s["pushed"], s["popped"]) == (pushed, pushed)
    assert consumed > ROUNDS * 10, "the consumer hardly ran: the test proves nothing"
    shm.detach()
