"""A connect process's handover to its successor, without a socket or a process.

The messages (``server.core.handover``) and the client table's ``export`` and
``adopt`` (``server.core.clients``): what goes out comes back the same, what
is malformed is refused with the message number, and a stream cut short
gives back every socket that was not adopted.
"""

from __future__ import annotations

import pytest
from test_clients import Table, frames

from server import HandoverError
from server.core.codes import Kind
from server.core.handover import (
    CHUNK,
    CLIENT,
    DATA,
    HELLO,
    ClientState,
    HandoverReader,
    Limits,
    messages,
)

LIMITS = Limits(max_conns=3, max_partial=104, max_out=1 << 20, max_code=1 << 16)


def run(clients: list[ClientState], codes: list[bytes]) -> list[tuple[bytes, list[int]]]:
    """The messages, each with the "descriptor" of its client (100 + index)."""
    return [(m, [] if i is None else [100 + i]) for m, i in messages(clients, codes)]


def read(stream: list[tuple[bytes, list[int]]], limits: Limits = LIMITS) -> HandoverReader:
    reader = HandoverReader(limits)
    for message, fds in stream:
        reader.feed(message, fds)
    return reader


def client(slot: int, **fields: object) -> ClientState:
    conn = 1 << 32 | slot
    return ClientState(conn=conn, slot=slot, peer=f"127.0.0.1:{4000 + slot}", **fields)  # type: ignore[arg-type]


def test_what_goes_out_comes_back_in_order() -> None:
    clients = [
        client(0, partial=b"\0\0\0\x05ab", out=b"x" * (3 * CHUNK + 7), last_input=5.0),
        client(2, closing="bye", last_output=7.5, frame_started=6.0),
    ]
    codes = [b"K" * 10, b"", b"L" * (CHUNK + 1)]
    stream = run(clients, codes)
    assert sum(m[:1] == DATA for m, _ in stream) == 4 + 1 + 2  # in chunks; b"" needs none
    reader = read(stream)
    assert reader.complete
    assert reader.clients == [(clients[0], 100), (clients[1], 101)]
    assert reader.codes == codes
    assert reader.leftover() == []


def test_an_empty_handover_is_complete() -> None:
    reader = read(run([], []))
    assert reader.complete and reader.clients == [] and reader.codes == []


@pytest.mark.parametrize("cut", range(1, 7))
def test_a_stream_cut_short_keeps_whole_clients_and_gives_back_the_rest(cut: int) -> None:
    clients = [client(0, out=b"a" * (CHUNK + 1)), client(1, partial=b"\0\0")]
    stream = run(clients, [b"code"])  # H C D D C D K D E
    reader = read(stream[:cut])
    assert not reader.complete
    whole = [fd for _, fd in reader.clients]
    left = reader.leftover()
    received = [fd for _, fds in stream[:cut] for fd in fds]
    assert sorted(whole + left) == received  # every socket: adopted or given back
    assert whole == [100, 101][: (cut >= 4) + (cut >= 6)]


def _bad(stream: list[tuple[bytes, list[int]]], match: str) -> HandoverReader:
    reader = HandoverReader(LIMITS)
    with pytest.raises(HandoverError, match=match):
        for message, fds in stream:
            reader.feed(message, fds)
    return reader


def test_malformed_handovers_are_refused_and_name_the_message() -> None:
    good = run([client(1, out=b"zz")], [])
    hello, head, data, end = good
    _bad([head], "first message is not HELLO")
    _bad([(HELLO + b'{"version":9,"clients":0,"codes":0}', [])], "handover version 9")
    _bad([(HELLO + b"not json", [])], "not a JSON object")
    _bad([(HELLO + b'{"version":1,"clients":99,"codes":0}', [])], "client count 99 out of range")
    _bad([hello, (head[0], [])], "CLIENT message with 0 sockets")
    _bad([hello, (head[0], [7, 8])], "with 2 sockets")
    _bad([hello, (b"Q", [])], "unknown message type")
    _bad([hello, head, (DATA + b"zzz", [])], "DATA beyond")
    _bad([hello, head, end], "before the DATA announced")
    _bad([hello, end], "END before everything HELLO announced")
    _bad([*good, hello], "after END")
    bad_slot = CLIENT + head[0][1:].replace(b'"slot":1', b'"slot":2')
    reader = _bad([hello, (bad_slot, [5])], r"message #2: connection 0x100000001 does not belong")
    assert reader.leftover() == [5]  # the shell closes it
    big = run([client(0, partial=b"p" * 105)], [])
    _bad(big, "partial frame 105 out of range")
    _bad([hello, (DATA + b"x", [3])], "1 descriptor")


def test_the_table_exports_and_adopts_a_client_mid_frame() -> None:
    old = Table()
    a = old.t.open("127.0.0.1:1", 1.0)
    b = old.t.open("127.0.0.1:2", 1.0)
    assert a is not None and b is not None
    old.codes()
    old.t.received(a, frames(b"whole") + frames(b"half-way")[:6], 2.0)  # a frame and a half
    old.t.deliver([b"\x05" + a.conn.to_bytes(8, "little") + frames(b"reply")])  # not yet written
    states, codes = old.t.export()  # every byte is still in a's socket: the successor reads it
    assert [s.conn for s in states] == [a.conn, b.conn]
    assert states[0].partial == b"" and codes == []
    a.consumed = a.received  # as if taken out of the socket (a frame too large to leave there)
    states, codes = old.t.export()
    assert states[0].partial == frames(b"half-way")[:6] and states[0].frame_started == 2.0
    assert len(codes) == 1  # the whole frame's MESSAGE, not yet pushed
    reader = read(run(states, codes), Limits(3, 104, 1 << 20, 4096))

    new = Table()  # the same connection table: the slots are still open in it
    new.conns = old.conns
    new.t.conns = old.conns
    adopted = new.t.adopt([s for s, _ in reader.clients], reader.codes)
    assert new.t.restart() == 0  # nothing lost: both were handed over
    assert [c.conn for c in adopted] == [a.conn, b.conn]
    assert [code for code, _c, _e in new.t.backlog] == codes
    new_a = adopted[0]
    assert bytes(new_a.out) == bytes(a.out)
    new.t.received(new_a, frames(b"half-way")[6:], 3.0)  # the rest of the frame
    assert new.messages() == [b"half-way"]
    c = new.t.open("127.0.0.1:3", 3.0)
    assert c is not None and c.slot == 2  # the adopted slots are taken


def test_adopt_refuses_a_connection_the_table_does_not_hold_open() -> None:
    t = Table()
    state = client(0)  # never opened in this connection table
    with pytest.raises(HandoverError, match="not open in the connection table"):
        t.t.adopt([state], [])
    assert t.t.clients == {} and len(t.t.free_slots) == 3  # nothing half-adopted


def test_restart_closes_only_what_was_not_handed_over() -> None:
    old = Table()
    a = old.t.open("127.0.0.1:1", 1.0)
    b = old.t.open("127.0.0.1:2", 1.0)
    assert a is not None and b is not None
    states, _ = old.t.export()
    new = Table()
    new.conns = new.t.conns = old.conns
    new.t.adopt(states[:1], [])
    assert new.t.restart() == 1
    (closed,) = [code for code, _c, _e in new.t.backlog]
    assert closed[0] == Kind.CLOSED.value and int.from_bytes(closed[1:9], "little") == b.conn
    assert not old.conns.is_open(b.conn) and old.conns.is_open(a.conn)
