"""Inbound codes on their way to the queue, and the ledger committed before
each push (``server.core.inflow``, ``ClientTable.push``), on a bytearray."""

from __future__ import annotations

from server.core.clients import ClientTable
from server.core.codering import CodeRing
from server.core.codes import Kind, decode
from server.core.config import ServerConfig
from server.core.conntable import ConnTable
from server.core.conntable import region_size as conns_size
from server.core.framing import LengthFraming
from server.core.inflow import fitting, handed_over, taken_partial
from server.core.ring import region_size as ring_size
from server.core.streams import INBOUND, StreamLedger
from server.core.streams import region_size as ledger_size


class Counters(dict[str, int]):
    def add(self, counter: str, n: int = 1) -> None:
        self[counter] = self.get(counter, 0) + n

    def set(self, counter: str, value: int) -> None:
        self[counter] = value


def frames(*payloads: bytes) -> bytes:
    return b"".join(LengthFraming().encode(p) for p in payloads)


def setup(queue: int = 4096, framing: str = "length") -> tuple[ClientTable, CodeRing, StreamLedger]:
    cfg = ServerConfig(max_frame=200, queue_bytes=queue, max_conns=3, framing=framing).validate()
    conns = ConnTable(memoryview(bytearray(conns_size(3))), 3, init=True)
    ledger = StreamLedger(memoryview(bytearray(ledger_size(3))), 3, init=True)
    table = ClientTable(cfg, conns, Counters(), streams=ledger)
    ring = CodeRing(memoryview(bytearray(ring_size(queue))), queue, init=True)
    return table, ring, ledger


def push(table: ClientTable, ring: CodeRing) -> bool:
    return table.push(ring.push_many, ring.room(), ring.tail, ring.capacity)


def test_fitting_cuts_only_at_the_end_of_a_read() -> None:
    a, b = object(), object()
    items = [(b"x" * 6, None, 0), (b"y" * 6, a, -1), (b"z" * 6, a, 30), (b"w" * 6, b, 7)]
    assert fitting(items, 10) == (1, 10, {})
    assert fitting(items, 29) == (1, 10, {})  # the second code alone is in the middle of a read
    assert fitting(items, 30) == (3, 30, {a: 30})
    assert fitting(items, 1000) == (4, 40, {a: 30, b: 7})


def test_handed_over_are_the_codes_whose_bytes_left_the_socket() -> None:
    a, b = object(), object()
    consumed = {a: 30, b: 0}
    items = [(b"o", None, 0), (b"a1", a, -1), (b"a2", a, 30), (b"a3", a, 50), (b"b1", b, 9)]
    got = handed_over(items, lambda c, end: end > consumed[c])
    assert got == [b"o", b"a1", b"a2"]
    assert taken_partial(b"abcdef", received=100, consumed=96) == b"ab"
    assert taken_partial(b"abcdef", received=100, consumed=90) == b""


def test_the_ledger_is_committed_for_the_tail_the_push_publishes() -> None:
    table, ring, ledger = setup()
    a = table.open("127.0.0.1:1", 0.0)
    assert a is not None
    table.received(a, frames(b"one", b"two") + frames(b"three")[:4], 0.0)
    assert push(table, ring) is False
    whole = len(frames(b"one", b"two"))
    assert table.pushed == {a: whole}
    assert ledger.value(a.slot, INBOUND, ring.tail) == whole
    assert ledger.value(a.slot, INBOUND, ring.tail - 1) == 0  # not before the tail moved
    kinds = [decode(code).kind for code in ring.pop_many()]
    assert kinds == [Kind.OPENED, Kind.MESSAGE]


def test_a_full_queue_keeps_whole_reads_back_and_commits_only_what_went_in() -> None:
    table, ring, ledger = setup(queue=512, framing="length")
    a = table.open("a", 0.0)
    b = table.open("b", 0.0)
    assert a is not None and b is not None
    push(table, ring)
    table.pushed.clear()
    big = frames(b"x" * 150)
    table.received(a, big, 0.0)
    table.received(b, big, 0.0)
    table.received(a, big, 0.0)
    assert push(table, ring) is True  # paused: not everything fits
    assert not table.reading
    pushed = dict(table.pushed)
    assert a in pushed and all(end in (len(big), 2 * len(big)) for end in pushed.values())
    for c, end in pushed.items():
        assert ledger.value(c.slot, INBOUND, ring.tail) == end
    ring.pop_many()
    table.pushed.clear()
    assert push(table, ring) is True and table.reading
    assert table.pushed[a] == 2 * len(big)
    assert ledger.value(a.slot, INBOUND, ring.tail) == 2 * len(big)
    assert ledger.value(b.slot, INBOUND, ring.tail) == len(big)


def test_a_length_framed_read_of_many_codes_can_be_cut_between_any_two() -> None:
    table, ring, ledger = setup(queue=1024)
    a = table.open("a", 0.0)
    assert a is not None
    push(table, ring)
    ring.pop_many()
    data = frames(*[bytes([i]) * 190 for i in range(8)])  # more than max_wire: several codes
    table.received(a, data, 0.0)
    ends = [end for _code, _c, end in table.inq]
    assert len(ends) > 1 and all(end > 0 for end in ends) and ends[-1] == len(data)
    push(table, ring)
    first = table.pushed[a]
    assert 0 < first < len(data) and first in ends
    assert ledger.value(a.slot, INBOUND, ring.tail) == first


def test_a_line_read_that_can_never_fit_whole_is_pushed_in_parts() -> None:
    table, ring, _ledger = setup(queue=512, framing="line")
    a = table.open("a", 0.0)
    assert a is not None
    push(table, ring)
    ring.pop_many()
    table.pushed.clear()
    table.received(a, b"\n" * 400, 0.0)  # 400 empty lines: 1600 record bytes, one read
    assert len(table.inq) > 1
    push(table, ring)
    assert table.pushed == {a: -1}  # not exact: the shell takes out everything seen
    for _ in range(20):
        ring.pop_many()
        push(table, ring)
    assert not table.backlog and table.reading
