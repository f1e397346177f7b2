"""A server on the bus, in its pure core (``server.core.bridge``): the room's
messages become broadcasts exactly once, and a step's broadcasts reach the
room once, also when the process dies at every point in between.

The inbox is a list of codes with a head and a commit, the outbound queue
and the journals are the real ones on bytearrays; a death is a
BaseException that escapes the step."""

from __future__ import annotations

import pytest

from server.core.app import Outbox
from server.core.bridge import (
    PARTS,
    REGION_SIZE,
    BridgeStep,
    BusJournal,
    pack,
    remote_mark,
    room_of,
    split,
    unpack,
)
from server.core.buslink import envelope
from server.core.codering import CodeRing
from server.core.codes import NO_CONN, Kind, conn_id, decode, encode, frame_records
from server.core.framing import LengthFraming
from server.core.journal import REGION_SIZE as JOURNAL_SIZE
from server.core.journal import StepJournal
from server.core.ring import RECORD_HEADER, region_size
from server.core.stepper import LogicStepper
from server.errors import BadCode


class Death(BaseException):
    pass


class FakeInbox:
    """Codes at absolute positions, as a SharedQueue's ring has them."""

    def __init__(self) -> None:
        self.codes: list[tuple[int, bytes]] = []
        self.head = self.tail = 0

    def push(self, code: bytes) -> None:
        self.codes.append((self.tail, code))
        self.tail += RECORD_HEADER + len(code)

    def peek(self, max_codes: int = 1 << 30, start: int | None = None, max_bytes: int = 0):  # type: ignore[no-untyped-def]
        got = [c for at, c in self.codes if at >= self.head][:max_codes]
        return got, self.head + sum(RECORD_HEADER + len(c) for c in got)

    def commit(self, end: int) -> int:
        before = len(self.codes)
        self.codes = [(at, c) for at, c in self.codes if at >= end]
        self.head = end
        return before - len(self.codes)

    def positions(self) -> tuple[int, int]:
        return self.head, self.tail


def ring(capacity: int = 4096) -> CodeRing:
    return CodeRing(memoryview(bytearray(region_size(capacity))), capacity, init=True)


def broadcasts(outbound: CodeRing) -> list[bytes]:
    out = []
    for code in outbound.pop_many(10_000):
        c = decode(code)
        assert c.kind is Kind.BROADCAST and c.conn == NO_CONN
        out.append(c.body[4:])  # length framing: u32 + payload
    return out


def bridge(inbox: FakeInbox, outbound: CodeRing, raw: bytearray, **kw) -> BridgeStep:  # type: ignore[no-untyped-def]
    journal = BusJournal(memoryview(raw), init=not any(raw))
    outbox = Outbox(outbound.capacity, LengthFraming().encode)
    return BridgeStep(inbox, outbound, journal, outbox, **kw)


# -- the pieces -------------------------------------------------------------------------
def test_pack_and_unpack_and_what_a_corrupt_payload_gives() -> None:
    lines = [b"a", b"", b"x" * 300]
    assert unpack(pack(lines)) == lines
    assert unpack(b"") == []
    with pytest.raises(BadCode, match="inside a length"):
        unpack(b"\x01\x00")
    with pytest.raises(BadCode, match="claims 9 bytes with 1 left"):
        unpack(b"\x09\x00\x00\x00z")


def test_split_keeps_whole_lines_in_runs_of_at_most_so_many_bytes() -> None:
    lines = [b"a" * 10, b"b" * 10, b"c" * 30, b"d"]
    assert split(lines, 30) == [[b"a" * 10, b"b" * 10], [b"c" * 30], [b"d"]]
    assert split([], 30) == []
    assert [line for run in split(lines, 30) for line in run] == lines


def test_marks_grow_with_the_step_then_the_peer_then_the_part() -> None:
    marks = [remote_mark(k, i, p) for k in (5, 6) for i in range(3) for p in range(2)]
    assert marks == sorted(marks) and len(set(marks)) == len(marks)
    assert remote_mark(6, 0, 0) > remote_mark(5, 31, PARTS - 1)
    with pytest.raises(ValueError, match="at most 32 peers"):
        remote_mark(1, 32)
    with pytest.raises(ValueError, match="at most 32 parts"):
        remote_mark(1, 0, PARTS)
    assert room_of("chat@h1") == "chat" and room_of("plain") == "plain"


def test_a_corrupt_bus_journal_is_a_clear_error() -> None:
    raw = bytearray(REGION_SIZE)
    BusJournal(memoryview(raw), init=True)
    raw[0] ^= 1
    with pytest.raises(Exception, match="bus journal magic"):
        BusJournal(memoryview(raw), init=False)


# -- in: the room's messages ------------------------------------------------------------
def test_room_messages_become_broadcasts_once_with_the_apps_words() -> None:
    inbox, outbound, raw = FakeInbox(), ring(), bytearray(REGION_SIZE)
    inbox.push(envelope("chat@h2", "chat@h1", pack([b"one", b"two"])))
    inbox.push(envelope("chat@h3", "chat@h1", pack([b"drop me", b"three"])))
    inbox.push(b"\x00garbage")
    errors: list[str] = []

    def on_remote(source: str, line: bytes) -> bytes | None:
        return None if line == b"drop me" else source.encode() + b"> " + line

    step = bridge(inbox, outbound, raw, on_remote=on_remote, on_error=errors.append)
    assert step.step() == 3
    assert broadcasts(outbound) == [b"chat@h2> one", b"chat@h2> two", b"chat@h3> three"]
    assert step.step() == 0 and inbox.codes == []
    assert step.errors == 1 and "bad room message" in errors[0]


def test_a_full_outbound_queue_holds_the_room_step_and_loses_nothing() -> None:
    inbox, outbound, raw = FakeInbox(), ring(256), bytearray(REGION_SIZE)
    outbound.push_many([b"x" * 190])  # the connect process is slow
    inbox.push(envelope("a@h2", "b@h1", pack([b"y" * 80])))
    step = bridge(inbox, outbound, raw)
    assert step.step() == BridgeStep.BLOCKED and len(inbox.codes) == 1
    outbound.pop_many(1)
    assert step.step() == 1 and broadcasts(outbound) == [b"y" * 80]


@pytest.mark.parametrize("death", ["while broadcasting", "after publishing"])
def test_a_death_in_a_room_step_neither_loses_nor_repeats_a_broadcast(death: str) -> None:
    inbox, outbound, raw = FakeInbox(), ring(), bytearray(REGION_SIZE)
    for i in range(3):
        inbox.push(envelope("a@h2", "b@h1", pack([b"m%d" % i])))

    def die(*_args: object) -> None:
        raise Death

    if death == "while broadcasting":  # nothing published
        first = bridge(inbox, outbound, raw, on_remote=lambda source, line: die())
    else:  # published, the messages not taken
        first = bridge(inbox, outbound, raw, after_publish=die)
    with pytest.raises(Death):
        first.step()
    again = bridge(inbox, outbound, raw)  # the restarted process
    finished = again.recover()
    assert finished == (3 if death == "after publishing" else 0)
    while again.step() > 0:
        pass
    assert broadcasts(outbound) == [b"m0", b"m1", b"m2"]


# -- out: a step's broadcasts for the room ------------------------------------------------
class Chat:
    def on_message(self, conn, payload: bytes) -> None:  # type: ignore[no-untyped-def]
        conn.broadcast(payload)


CONN = conn_id(1, 1)


def message(*frames: bytes) -> bytes:
    return encode(Kind.MESSAGE, CONN, frame_records(list(frames)))


def test_a_redone_step_has_the_same_key_and_a_full_room_holds_the_step() -> None:
    inbound, outbound = ring(), ring()
    journal_raw = bytearray(JOURNAL_SIZE)
    sent: list[tuple[int, list[bytes]]] = []
    full = [True]

    def room(key: int, payloads: list[bytes]) -> bool:
        if full[0]:
            full[0] = False
            return False
        sent.append((key, payloads))
        return True

    inbound.push_many([message(b"a", b"b"), message(b"c")])
    stepper = LogicStepper(
        inbound, outbound, StepJournal(memoryview(journal_raw), init=True), Chat(), room=room
    )
    assert stepper.step() == LogicStepper.BLOCKED and outbound.tail == 0  # nothing published
    assert stepper.step() == 2
    assert sent == [(inbound.head, [b"a", b"b", b"c"])]  # keyed by where the step ends

    def dying_room(key: int, payloads: list[bytes]) -> bool:
        sent.append((key, payloads))
        raise Death  # queued, then the process died before publishing

    inbound.push_many([message(b"d")])
    end = inbound.tail
    dying = LogicStepper(
        inbound, outbound, StepJournal(memoryview(journal_raw), init=False), Chat(), room=dying_room
    )
    with pytest.raises(Death):
        dying.step()
    redo = LogicStepper(
        inbound, outbound, StepJournal(memoryview(journal_raw), init=False), Chat(), room=room
    )
    redo.recover()
    assert redo.step() == 1
    assert sent[-2:] == [(end, [b"d"]), (end, [b"d"])]  # the same key: the room skips it


def test_careful_steps_key_each_request_below_the_next() -> None:
    inbound, outbound = ring(), ring()
    journal_raw = bytearray(JOURNAL_SIZE)
    journal = StepJournal(memoryview(journal_raw), init=True)
    inbound.push_many([message(b"a", b"b", b"c")])
    head, end = inbound.head, inbound.tail
    journal.begin(head, end)  # a batch here crashed before: careful from now on
    keys: list[int] = []
    stepper = LogicStepper(
        inbound, outbound, journal, Chat(), room=lambda key, payloads: keys.append(key) or True
    )
    while stepper.step() != 0:
        pass
    assert keys == [head + 1, head + 2, end]  # one request a step, growing, the last at the end
