"""Poison requests, not poison codes: after a crash the logic process answers
a code one request at a time, so only the request that kills it is set aside.

Each "process" here is a new LogicStepper on the same memory (the segment's
rings and journal on bytearrays); a death is a BaseException that escapes the
step, raised by the app or at a chosen point of the publishing sequence.
"""

from __future__ import annotations

import pytest

from server.core.codering import CodeRing
from server.core.codes import Kind, conn_id, decode, encode, payloads
from server.core.framing import LengthFraming
from server.core.journal import MAX_ATTEMPTS, REGION_SIZE, StepJournal
from server.core.ring import region_size
from server.core.stepper import LogicStepper

CONN = conn_id(1, 1)
OTHER = conn_id(2, 1)


class Death(BaseException):
    """The process died here (SIGKILL, as far as the shared memory can tell)."""


class Echo:
    """Echo; a payload starting with b"die" kills the process every time."""

    def on_message(self, conn, payload: bytes) -> None:  # type: ignore[no-untyped-def]
        if payload.startswith(b"die"):
            raise Death(payload)
        conn.send(payload)


class World:
    def __init__(self) -> None:
        self.inbound = CodeRing(memoryview(bytearray(region_size(8192))), 8192, init=True)
        self.outbound = CodeRing(memoryview(bytearray(region_size(8192))), 8192, init=True)
        self.journal_mem = memoryview(bytearray(REGION_SIZE))
        StepJournal(self.journal_mem, init=True)
        self.replies: list[bytes] = []
        self.deaths = 0

    def process(self) -> LogicStepper:
        """A new logic process on the same memory: it recovers first."""
        journal = StepJournal(self.journal_mem, init=False)
        stepper = LogicStepper(self.inbound, self.outbound, journal, Echo())
        stepper.recover()
        return stepper

    def run(self, die_at: tuple[str, int] | None = None, limit: int = 50) -> None:
        """Run processes until the inbound queue is empty; the first one dies
        at the ``die_at`` (method name, call number) crash point, if given."""
        for _ in range(limit):
            stepper = self.process()
            if die_at is not None:
                arm(stepper, *die_at)
                die_at = None
            try:
                while stepper.step() != 0:
                    self.drain()
                self.drain()
                return
            except Death:
                self.deaths += 1
                self.drain()  # the connect process goes on delivering
        raise AssertionError("did not finish")

    def drain(self) -> None:
        for code in self.outbound.pop_many():
            kind, conn, body = decode(code)
            assert kind is Kind.SEND
            self.replies += payloads(body)


def arm(stepper: LogicStepper, name: str, call: int) -> None:
    """Make ``stepper`` die right after its ``call``-th call of ``name``
    (a journal method, or the push of replies)."""
    target = stepper if name == "_push" else stepper.journal
    real = getattr(target, name)
    calls = [0]

    def dying(*args: object) -> object:
        result = real(*args)
        calls[0] += 1
        if calls[0] == call:
            raise Death(f"after {name} #{call}")
        return result

    setattr(target, name, dying)


def message(*frames: bytes, conn: int = CONN) -> bytes:
    return encode(Kind.MESSAGE, conn, b"".join(LengthFraming().encode(f) for f in frames))


def test_only_the_poison_request_is_set_aside_not_its_neighbours() -> None:
    w = World()
    frames = [b"a1", b"a2", b"die!", b"a4", b"a5"]  # one read: one code
    w.inbound.push_many([message(*frames), message(b"b1", conn=OTHER)])
    w.run()
    assert w.replies == [b"a1", b"a2", b"a4", b"a5", b"b1"]
    # a batch death (not attributable), then MAX_ATTEMPTS deaths at the request itself
    assert w.deaths == MAX_ATTEMPTS + 1
    journal = StepJournal(w.journal_mem, init=False)
    assert journal.set_aside_count == 1
    assert journal.report("journal")["last_set_aside"] == {"conn": CONN, "size": 4}


def test_two_poison_requests_in_one_code_are_each_set_aside() -> None:
    w = World()
    w.inbound.push(message(b"die1", b"ok", b"die2", b"end"))
    w.run()
    assert w.replies == [b"ok", b"end"]
    assert StepJournal(w.journal_mem, init=False).set_aside_count == 2


@pytest.mark.parametrize(
    "die_at",
    [
        ("record_part", 1),
        ("record_part", 2),
        ("_push", 1),
        ("_push", 2),
        ("_push", 3),
        ("confirm_part", 1),
        ("confirm_part", 2),
        ("record", 1),
        ("record", 2),
        ("succeeded", 1),
    ],
    ids=lambda d: f"{d[0]}#{d[1]}",
)
def test_a_death_at_any_point_of_careful_publishing_loses_and_repeats_nothing(
    die_at: tuple[str, int],
) -> None:
    w = World()
    # first a batch death puts the process in careful mode at this code
    w.inbound.push_many([message(b"x1", b"x2", b"die", b"x4"), message(b"y1", b"y2")])
    stepper = w.process()
    with pytest.raises(Death):
        stepper.step()
    w.run(die_at=die_at)
    assert w.replies == [b"x1", b"x2", b"x4", b"y1", b"y2"]


def test_a_code_without_trouble_is_still_one_batch() -> None:
    w = World()
    w.inbound.push_many([message(b"1", b"2"), message(b"3")])
    stepper = w.process()
    assert stepper.step() == 2  # both codes in one step
    w.drain()
    assert w.replies == [b"1", b"2", b"3"]


def journal_at(head: int, done: int, tail: int) -> tuple[StepJournal, memoryview]:
    mem = memoryview(bytearray(REGION_SIZE))
    journal = StepJournal(mem, init=True)
    for k in range(done):
        journal.record_part(tail, head, k + 1)
        journal.confirm_part()
    return journal, mem


@pytest.mark.parametrize("same_code", [True, False])
def test_a_torn_part_record_never_confirms_unpublished_replies(same_code: bool) -> None:
    # The code at 100 has 2 requests answered, the tail is 500.  Then either
    # request 3 of it runs (replies to 520), or the code at 200 starts and its
    # first request has no replies (the tail stays 500: the dangerous case).
    head, out_tail, nxt = (100, 520, 3) if same_code else (200, 500, 1)
    before = 2 if same_code else 0
    writes = journal_at(100, 2, 500)[0].part_writes(out_tail, head, nxt)
    for stop in range(len(writes) + 1):  # a crash after ``stop`` of the stores
        journal, mem = journal_at(100, 2, 500)
        words = mem.cast("Q")
        for word, value in writes[:stop]:
            words[word] = value
        published = stop == len(writes) and out_tail == 500
        assert journal.frames_done(head, 500) == (nxt if published else before), stop


def test_the_set_aside_log_keeps_the_latest_requests() -> None:
    from server.core.ring import region_size as ring_region
    from server.core.setaside import KEEP, SetAsideLog

    mem = memoryview(bytearray(ring_region(3 * (KEEP + 100))))
    log = SetAsideLog.on_region(mem, 3 * (KEEP + 100), init=True, observer=False)
    for i in range(10):
        log.add(conn=i, payload=bytes([i]) * (KEEP + 50), at_ms=1000 + i, attempts=3)
    kept = log.entries()
    assert [e["conn"] for e in kept] == [7, 8, 9]  # the oldest were dropped
    assert all(e["size"] == KEEP + 50 and len(e["payload"]) == KEEP for e in kept)
