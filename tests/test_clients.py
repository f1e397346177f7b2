"""The connect process's client table, without a socket or a process.

Bytes and times go in, codes and decisions come out (``server.core.clients``).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

import pytest

from server.core.clients import HANDOVER_BYTES, HANDOVER_CODES, READ, WRITE, Client, ClientTable
from server.core.codes import Kind, decode, encode, payloads
from server.core.config import ServerConfig
from server.core.conntable import ConnTable, region_size
from server.core.framing import LengthFraming, LineFraming

MAX_FRAME = 100


class Counters(collections.Counter[str]):
    def add(self, counter: str, n: int = 1) -> None:
        self[counter] += n

    def set(self, counter: str, value: int) -> None:
        self[counter] = value


class Table:
    """A table with a connection table on a bytearray, counters in a dict,
    and a record of what it asked the shell to close."""

    def __init__(self, **options: object) -> None:
        opts: dict[str, object] = {"max_frame": MAX_FRAME, "queue_bytes": 4096, "max_conns": 3}
        opts.update(options)
        self.cfg = ServerConfig(**opts).validate()  # type: ignore[arg-type]
        self.region = bytearray(region_size(self.cfg.max_conns))
        self.conns = ConnTable(memoryview(self.region), self.cfg.max_conns, init=True)
        self.counters = Counters()
        self.closed: list[tuple[int, str]] = []
        self.t = ClientTable(self.cfg, self.conns, self.counters, self.on_closed)

    def on_closed(self, c: Client, reason: str) -> None:
        self.closed.append((c.conn, reason))

    def codes(self) -> list[tuple[Kind, int, bytes]]:
        """Take this turn's inbound codes, decoded."""
        out = [tuple(decode(code)) for code, _client, _end in self.t.inq]
        self.t.inq = []
        return out  # type: ignore[return-value]

    def messages(self) -> list[bytes]:
        return [p for kind, _, body in self.codes() if kind is Kind.MESSAGE for p in payloads(body)]


def frames(*payloads_: bytes) -> bytes:
    return b"".join(LengthFraming().encode(p) for p in payloads_)


REQUESTS = [b"", b"a", b"hello", b"x" * MAX_FRAME, bytes(range(50))]


@pytest.mark.parametrize("bytewise", [False, True])
def test_frames_become_message_codes_in_any_pieces(bytewise: bool) -> None:
    tb = Table()
    c = tb.t.open("peer:1", now=0.0)
    assert c is not None
    assert tb.codes() == [(Kind.OPENED, c.conn, b"peer:1")]
    wire = frames(*REQUESTS)
    pieces = [wire[i : i + 1] for i in range(len(wire))] if bytewise else [wire]
    for piece in pieces:
        tb.t.received(c, piece, now=1.0)
    codes = tb.codes()
    assert {conn for _, conn, _ in codes} == {c.conn}
    assert [p for _, _, body in codes for p in payloads(body)] == REQUESTS
    if not bytewise:
        assert len(codes) == 1  # one read, one code
    assert c.framing.buffered == 0 and tb.closed == []


@pytest.mark.parametrize("framing", ["length", "line"])
def test_reads_into_one_reused_buffer_give_codes_of_their_own(framing: str) -> None:
    """The shell reads every socket into one buffer and hands the table a
    view of it: each code must hold its own bytes before the next read."""
    tb = Table(framing=framing)
    c = tb.t.open("p", 0.0)
    assert c is not None
    tb.codes()
    sent = [bytes([65 + i]) * 90 for i in range(40)]  # cut into several codes (max_wire 1024)
    wire = frames(*sent) if framing == "length" else b"".join(line + b"\n" for line in sent)
    scratch = bytearray(len(wire))
    view = memoryview(scratch)
    items = []
    for at, size in ((0, 91), (91, 2000), (2091, len(wire) - 2091)):  # one, many, the rest
        scratch[:size] = wire[at : at + size]
        tb.t.received(c, view[:size], 0.0)
        items += tb.t.inq
        tb.t.inq = []
        scratch[:] = bytes(len(scratch))  # the next read overwrites the buffer
    assert all(isinstance(code, bytes) for code, _c, _end in items)
    assert [p for code, _c, _end in items for p in payloads(decode(code).body)] == sent


def test_line_framing_gives_the_same_codes() -> None:
    tb = Table(framing="line")
    c = tb.t.open("p", 0.0)
    assert c is not None and isinstance(c.framing, LineFraming)
    tb.codes()
    tb.t.received(c, b"hi\r\nthere\npart", 0.0)
    assert tb.messages() == [b"hi", b"there"]
    tb.t.received(c, b"ial\n", 0.0)
    assert tb.messages() == [b"partial"]


def test_a_large_read_is_cut_between_frames() -> None:
    tb = Table()
    c = tb.t.open("p", 0.0)
    assert c is not None
    tb.codes()
    sent = [bytes([i]) * 90 for i in range(40)]  # 3760 bytes, max_wire is 1024
    tb.t.received(c, frames(*sent), 0.0)
    codes = tb.codes()
    assert len(codes) > 3
    assert all(len(body) <= tb.t.max_wire for _, _, body in codes)
    assert [p for _, _, body in codes for p in payloads(body)] == sent


def test_a_frame_over_the_limit_closes_that_client_only() -> None:
    tb = Table()
    bad, good = tb.t.open("bad", 0.0), tb.t.open("good", 0.0)
    assert bad is not None and good is not None
    tb.codes()
    tb.t.received(bad, (MAX_FRAME + 1).to_bytes(4, "big"), 0.0)  # refused before the payload
    tb.t.received(good, frames(b"ok"), 0.0)
    codes = tb.codes()
    assert codes[0][:2] == (Kind.CLOSED, bad.conn) and b"frame too large" in codes[0][2]
    assert payloads(codes[1][2]) == [b"ok"]
    assert tb.closed == [(bad.conn, codes[0][2].decode())]
    assert tb.counters["closed_for_abuse"] == 1 and tb.counters["connections_open"] == 1
    assert not tb.t.is_open(bad) and tb.t.is_open(good)


@pytest.mark.parametrize(
    ("sent", "reason"), [(b"", "client closed the connection"), (b"\0\0", "mid-frame (2 bytes)")]
)
def test_end_of_input_closes_and_says_whether_a_frame_was_cut(sent: bytes, reason: str) -> None:
    tb = Table()
    c = tb.t.open("p", 0.0)
    assert c is not None
    if sent:
        tb.t.received(c, sent, 0.0)
    tb.t.received(c, b"", 0.0)
    assert reason in tb.closed[0][1]


def test_a_full_server_refuses_and_a_freed_slot_gets_a_new_generation() -> None:
    tb = Table()
    clients = [tb.t.open(f"p{i}", 0.0) for i in range(3)]
    assert all(clients) and tb.t.open("one too many", 0.0) is None
    assert tb.counters["connections_refused"] == 1
    first = clients[0]
    assert first is not None
    tb.t.close(first, "bye")
    again = tb.t.open("newcomer", 0.0)
    assert again is not None and again.slot == first.slot and again.conn != first.conn
    # a reply still queued for the old connection is dropped, not delivered to the newcomer
    dirty = tb.t.deliver([encode(Kind.SEND, first.conn, b"late")])
    assert dirty == [] and again.out == b"" and tb.counters["replies_dropped"] == 1


def test_a_full_queue_pauses_reading_everywhere_and_loses_nothing() -> None:
    tb = Table()
    a, b = tb.t.open("a", 0.0), tb.t.open("b", 0.0)
    assert a is not None and b is not None
    queue: list[bytes] = []
    room = [1]

    def push_many(codes: Iterable[bytes]) -> int:
        taken = list(codes)[: room[0]]
        queue.extend(taken)
        room[0] -= len(taken)
        return len(taken)

    tb.t.received(a, frames(b"1"), 0.0)
    assert tb.t.push(push_many) is True  # two OPENED + one MESSAGE, room for one
    assert not tb.t.reading and not tb.t.accepting
    assert tb.t.interest(a) & READ == 0 and tb.t.interest(b) & READ == 0
    assert tb.t.push(push_many) is False  # still full: nothing changes
    tb.t.received(b, frames(b"2"), 0.0)  # a read already under way still counts
    tb.t.push(push_many)
    room[0] = 100
    assert tb.t.push(push_many) is True and tb.t.reading
    assert tb.t.interest(a) & READ
    kinds = [(decode(q).kind, decode(q).conn) for q in queue]
    assert kinds == [
        (Kind.OPENED, a.conn),
        (Kind.OPENED, b.conn),
        (Kind.MESSAGE, a.conn),
        (Kind.MESSAGE, b.conn),
    ]


def test_a_few_codes_or_a_large_one_are_handed_over_before_the_turn_ends() -> None:
    tb = Table(max_conns=HANDOVER_CODES + 1, queue_bytes=1 << 20, max_frame=HANDOVER_BYTES)
    clients = [tb.t.open(str(n), 0.0) for n in range(HANDOVER_CODES + 1)]
    tb.t.push(lambda codes: len(list(codes)))  # the OPENED codes
    assert not tb.t.handover_due()
    tb.t.received(clients[0], frames(b"lone"), 0.0)
    assert not tb.t.handover_due()  # one request waits for the end of the turn, not for others
    for c in clients[1 : HANDOVER_CODES - 1]:
        tb.t.received(c, frames(b"x", b"y"), 0.0)
    tb.t.received(clients[-1], frames(b"half")[:3], 0.0)  # no whole frame: no code
    assert len(tb.t.inq) == HANDOVER_CODES - 1 and not tb.t.handover_due()
    tb.t.received(clients[HANDOVER_CODES - 1], frames(b"z"), 0.0)
    assert tb.t.handover_due()
    tb.t.push(lambda codes: len(list(codes)))
    assert not tb.t.handover_due()
    big = frames(b"b" * (HANDOVER_BYTES - 4))  # one code, as large as a handover
    tb.t.received(clients[0], big[:100], 0.0)
    assert not tb.t.handover_due()  # the frame is not whole yet
    tb.t.received(clients[0], big[100:], 0.0)
    assert len(tb.t.inq) == 1 and tb.t.handover_due()


def test_deliver_send_broadcast_and_close_after_the_output() -> None:
    tb = Table()
    a, b, c = (tb.t.open(p, 0.0) for p in "abc")
    assert a is not None and b is not None and c is not None
    dirty = tb.t.deliver(
        [
            encode(Kind.SEND, a.conn, b"to-a"),
            encode(Kind.BROADCAST, a.conn, b"all-but-a"),
            encode(Kind.CLOSE, b.conn, b"done"),
        ]
    )
    assert {x.conn for x in dirty} == {a.conn, b.conn, c.conn}
    assert (a.out, b.out, c.out) == (b"to-a", b"all-but-a", b"all-but-a")
    assert tb.t.interest(b) == WRITE  # closing: no more reading
    assert tb.t.wrote(b, 4, now=1.0) is True and b.out == b"but-a"
    assert tb.t.wrote(b, 5, now=1.0) is False  # output is out: now it closes
    assert tb.closed == [(b.conn, "done")]
    assert tb.t.deliver([encode(Kind.BROADCAST, 0, b"x")]) and a.out.endswith(b"x")


def test_a_client_that_does_not_read_is_paused_then_closed() -> None:
    tb = Table(out_buffer=200)
    c = tb.t.open("slow", 0.0)
    assert c is not None
    tb.t.deliver([encode(Kind.SEND, c.conn, b"x" * 201)])
    assert tb.t.interest(c) == WRITE  # over out_buffer: reading from it pauses
    assert tb.t.wrote(c, 0, 0.0) is True
    tb.t.deliver([encode(Kind.SEND, c.conn, b"x" * 700)])
    assert tb.t.wrote(c, 0, 0.0) is False
    assert "does not read its replies (901 bytes" in tb.closed[0][1]


def test_timers_close_idle_clients_and_clients_that_take_nothing() -> None:
    tb = Table(idle_timeout=10.0, send_timeout=5.0)
    idle, stuck, busy = (tb.t.open(p, 0.0) for p in ("idle", "stuck", "busy"))
    assert idle is not None and stuck is not None and busy is not None
    tb.t.deliver([encode(Kind.SEND, stuck.conn, b"unread")])
    tb.t.tick(4.0)
    assert tb.closed == []
    tb.t.received(busy, frames(b"hi"), 9.0)
    tb.t.tick(6.0)
    assert [conn for conn, _ in tb.closed] == [stuck.conn]
    assert "took no reply bytes for 6 s" in tb.closed[0][1]
    tb.t.tick(11.0)
    assert [conn for conn, _ in tb.closed][1:] == [idle.conn]
    assert "idle for 11 s" in tb.closed[1][1] and tb.t.is_open(busy)


def test_a_restart_tells_the_app_that_old_connections_are_lost() -> None:
    tb = Table()
    a = tb.t.open("a", 0.0)
    assert a is not None
    successor = ClientTable(tb.cfg, ConnTable(memoryview(tb.region), 3, init=False), tb.counters)
    assert successor.restart() == 1
    assert [decode(code)[:2] for code, _c, _e in successor.backlog] == [(Kind.CLOSED, a.conn)]
    assert tb.counters["connections_lost"] == 1 and tb.conns.count_open() == 0


def test_a_graceful_stop_reads_nothing_new_and_waits_for_the_output() -> None:
    tb = Table()
    c = tb.t.open("p", 0.0)
    assert c is not None
    tb.codes()
    tb.t.deliver([encode(Kind.SEND, c.conn, b"reply")])
    tb.t.begin_stop()
    assert tb.t.interest(c) == WRITE and not tb.t.accepting
    assert not tb.t.stop_done(queues_empty=True)  # "reply" is not written yet
    tb.t.wrote(c, 5, 1.0)
    assert tb.t.stop_done(queues_empty=True) and not tb.t.stop_done(queues_empty=False)
    tb.t.close_all("server stopping")
    assert tb.closed == [(c.conn, "server stopping")] and tb.codes()[0][0] is Kind.CLOSED


def test_a_frame_begun_and_not_finished_in_time_closes_the_client() -> None:
    tb = Table(frame_timeout=5.0, idle_timeout=0)
    slow, fine = tb.t.open("slow", 0.0), tb.t.open("fine", 0.0)
    assert slow is not None and fine is not None
    wire = frames(b"x" * 50)
    for second in range(1, 7):  # one byte a second: input never stops, the frame never ends
        tb.t.received(slow, wire[second - 1 : second], float(second))
        tb.t.received(fine, frames(b"ok"), float(second))  # whole frames: never timed
        tb.t.tick(float(second) + 0.5)
    assert [conn for conn, _ in tb.closed] == [slow.conn]
    assert "began a frame 6 s ago and sent only 6 bytes of it (--frame-timeout)" in tb.closed[0][1]
    assert tb.counters["closed_for_abuse"] == 1


def test_the_frame_timer_starts_with_each_new_frame() -> None:
    tb = Table(frame_timeout=5.0, idle_timeout=0)
    c = tb.t.open("c", 0.0)
    assert c is not None
    one, two = frames(b"a" * 20), frames(b"b" * 20)
    tb.t.received(c, one[:10], 0.0)  # frame 1 begins at 0
    tb.t.received(c, one[10:] + two[:10], 4.0)  # frame 1 ends, frame 2 begins at 4
    tb.t.tick(8.0)
    assert tb.closed == []
    tb.t.tick(9.5)
    assert [conn for conn, _ in tb.closed] == [c.conn]


def test_interest_bits_are_the_selectors_events_the_shell_passes_on() -> None:
    import selectors

    assert (READ, WRITE) == (selectors.EVENT_READ, selectors.EVENT_WRITE)


def test_a_client_whose_kernel_queue_never_drains_is_closed() -> None:
    """Everything was written into socket buffers (nothing left in ``out``),
    but the peer acknowledges nothing: the send queue the shell reports
    decides, not the bytes the kernel took."""
    tb = Table(send_timeout=5.0)
    stuck, reader = tb.t.open("stuck", 0.0), tb.t.open("reader", 0.0)
    assert stuck is not None and reader is not None
    kernel = {stuck.conn: 0, reader.conn: 0}
    for c in (stuck, reader):
        tb.t.deliver([encode(Kind.SEND, c.conn, b"r" * 150)])
        assert tb.t.wrote(c, 150, 0.5) and not c.out  # all in the kernel now
        kernel[c.conn] = 150
    for t in range(1, 8):
        kernel[reader.conn] = max(0, kernel[reader.conn] - 30)  # read slowly, but read
        tb.t.tick(float(t), lambda c: kernel[c.conn])
    assert [conn for conn, _ in tb.closed] == [stuck.conn]
    assert "took no reply bytes for 6 s (150 waiting)" in tb.closed[0][1]
    assert tb.t.is_open(reader)


def test_tick_asks_for_the_send_queue_only_of_clients_that_may_have_one() -> None:
    tb = Table(send_timeout=5.0)
    idle, busy = tb.t.open("idle", 0.0), tb.t.open("busy", 0.0)
    assert idle is not None and busy is not None
    asked: list[int] = []

    def queued(c: Client) -> int:
        asked.append(c.conn)
        return 0

    tb.t.deliver([encode(Kind.SEND, busy.conn, b"r" * 10)])
    tb.t.wrote(busy, 10, 0.5)
    tb.t.tick(1.0, queued)
    tb.t.tick(2.0, queued)  # nothing written since, the queue was empty: not asked
    assert asked == [busy.conn]
