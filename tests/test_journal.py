"""Exactly-once steps: a crash at every point of the step protocol (pure).

The logic process's step is played on bytearrays and cut off after each of
its stores in turn; a "restarted process" recovers from the journal and goes
on.  Every request must get exactly one reply, in order.
"""

from __future__ import annotations

import pytest

from server import BadCode
from server.core.codering import CodeRing
from server.core.codes import Kind, decode, encode
from server.core.journal import MAX_ATTEMPTS, REGION_SIZE, Pace, StepJournal
from server.core.ring import region_size


class Crash(Exception):
    pass


def world() -> tuple[CodeRing, CodeRing, bytearray]:
    inbound = CodeRing(memoryview(bytearray(region_size(3333))), 3333, init=True)
    outbound = CodeRing(memoryview(bytearray(region_size(3333))), 3333, init=True)
    return inbound, outbound, bytearray(REGION_SIZE)


def app(code: bytes) -> bytes:
    if code == b"poison":
        raise Crash("the app crashed on this code")
    return b"re:" + code


def step(inbound: CodeRing, outbound: CodeRing, journal: StepJournal, crash_at: int = -1) -> bool:
    """One step of the logic process; 'crashes' after stage ``crash_at``."""
    stage = 0

    def reached() -> None:
        nonlocal stage
        if stage == crash_at:
            raise Crash(f"killed after stage {stage}")
        stage += 1

    head = inbound.head
    pace = journal.pace(head)
    codes, end = inbound.peek_many(max_codes=1 if pace is not Pace.BATCH else 5)
    if not codes:
        return False
    if pace is Pace.SET_ASIDE:
        inbound.commit_head(end, 1)
        journal.set_aside(0, len(codes[0]))
        journal.succeeded(end)
        return True
    journal.begin(head, end)
    reached()  # 0
    replies = [app(c) for c in codes]
    reached()  # 1
    tail_after = outbound.tail + sum(len(r) + 4 for r in replies)
    journal._w[1] = tail_after  # record(), store by store
    reached()  # 2
    journal._w[3] = len(codes)
    reached()  # 3
    journal._w[2] = end
    reached()  # 4
    assert outbound.push_many(replies) == len(replies)
    reached()  # 5
    inbound.commit_head(end, len(codes))
    reached()  # 6
    journal.succeeded(end)
    return True


@pytest.mark.parametrize("crash_at", range(7))
@pytest.mark.parametrize("crash_in_step", [0, 1, 3])
def test_every_request_gets_exactly_one_reply(crash_at: int, crash_in_step: int) -> None:
    inbound, outbound, jbuf = world()
    requests = [b"req %d" % i for i in range(23)]
    assert inbound.push_many(requests) == len(requests)
    journal = StepJournal(memoryview(jbuf), init=True)
    for _ in range(crash_in_step):
        step(inbound, outbound, journal)
    with pytest.raises(Crash):
        step(inbound, outbound, journal, crash_at)
    # the process is gone; a new one attaches and recovers
    journal = StepJournal(memoryview(jbuf), init=False)
    journal.recover(inbound, outbound)
    while step(inbound, outbound, journal):
        pass
    assert outbound.pop_many(max_bytes=1 << 20) == [b"re:" + r for r in requests]
    assert inbound.stats()["popped"] == len(requests)


def test_a_poison_code_is_set_aside_after_some_attempts() -> None:
    inbound, outbound, jbuf = world()
    requests = [b"a", b"b", b"poison", b"c", b"d"]
    inbound.push_many(requests)
    restarts = 0
    while True:
        journal = (
            StepJournal(memoryview(jbuf), init=False)
            if restarts
            else StepJournal(memoryview(jbuf), init=True)
        )
        journal.recover(inbound, outbound)
        try:
            while step(inbound, outbound, journal):
                pass
            break
        except Crash:
            restarts += 1
            assert restarts < 10, "the poison code is never set aside"
    assert outbound.pop_many() == [b"re:a", b"re:b", b"re:c", b"re:d"]
    assert journal.set_aside_count == 1
    # one crash of the batch, then MAX_ATTEMPTS crashes of the code alone
    assert restarts == 1 + MAX_ATTEMPTS


def test_codes_round_trip_and_bad_codes_are_named() -> None:
    code = encode(Kind.SEND, (7 << 32) | 3, b"payload")
    assert decode(code) == (Kind.SEND, (7 << 32) | 3, b"payload")
    with pytest.raises(BadCode, match="shorter"):
        decode(b"\x01\x02")
    with pytest.raises(BadCode, match="unknown code kind 99"):
        decode(bytes([99]) + bytes(8))
