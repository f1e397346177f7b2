"""The pure pieces of the server, on bytearrays: no processes, no sockets."""

from __future__ import annotations

import pytest

from server import CodeTooLarge, ConfigError, CorruptSegment
from server.core.app import Conn, Dispatcher, Outbox, load_app
from server.core.codering import CodeRing
from server.core.codes import Kind, conn_id, decode, encode
from server.core.config import ServerConfig
from server.core.conntable import ConnTable, region_size
from server.core.framing import LengthFraming
from server.core.journal import REGION_SIZE, StepJournal
from server.core.ring import region_size as ring_size
from server.core.status import REGION_SIZE as STATUS_SIZE
from server.core.status import Reason, Role, StatusBoard
from server.core.stepper import LogicStepper


def test_connection_ids_carry_a_generation_that_survives_reloading() -> None:
    mem = memoryview(bytearray(region_size(4)))
    table = ConnTable(mem, 4, init=True)
    first = table.open(0)
    assert table.is_open(first) and table.count_open() == 1
    table.close(first)
    second = table.open(0)
    assert second != first and not table.is_open(first) and table.is_open(second)
    # a new connect process finds slot 0 open under the same generation
    again = ConnTable(mem, 4, init=False)
    assert again.open_ids() == [second]
    again.close(second)
    assert again.open(0) == conn_id(0, 3)
    assert not again.is_open(conn_id(7, 1))  # a slot beyond the table


def test_a_corrupt_generation_is_refused() -> None:
    mem = memoryview(bytearray(region_size(2)))
    ConnTable(mem, 2, init=True)
    mem.cast("Q")[1] = 1 << 40
    with pytest.raises(CorruptSegment, match="slot 1"):
        ConnTable(mem, 2, init=False)


def test_status_board_counts_restarts_and_reasons() -> None:
    mem = memoryview(bytearray(STATUS_SIZE))
    board = StatusBoard(mem, init=True)
    board.started(Role.LOGIC, 100, Reason.FIRST_START)
    board.started(Role.LOGIC, 101, Reason.KILLED, 9)
    board.add("replies_dropped", 3)
    info = StatusBoard(mem, init=False).describe()
    assert info["processes"]["logic"]["pid"] == 101
    assert info["processes"]["logic"]["restarts"] == 1
    assert info["processes"]["logic"]["last_start"] == "killed by signal 9"
    assert info["counters"]["replies_dropped"] == 3
    mem.cast("Q")[8 + 16 * Role.LOGIC + 4] = 77  # a corrupt reason is shown, not trusted
    assert (
        "unknown reason 77"
        in StatusBoard(mem, init=False).describe()["processes"]["logic"]["last_start"]
    )
    mem.cast("Q")[0] = 0
    with pytest.raises(CorruptSegment, match="status board magic"):
        StatusBoard(mem, init=False)


class CountingEcho:
    def __init__(self) -> None:
        self.calls = 0

    def on_message(self, conn, payload: bytes) -> None:  # type: ignore[no-untyped-def]
        self.calls += 1
        conn.send(payload)


def wire(payload: bytes) -> bytes:
    return LengthFraming().encode(payload)


def world(out_capacity: int = 4096) -> tuple[CodeRing, CodeRing, StepJournal]:
    inbound = CodeRing(memoryview(bytearray(ring_size(4096))), 4096, init=True)
    outbound = CodeRing(memoryview(bytearray(ring_size(out_capacity))), out_capacity, init=True)
    return inbound, outbound, StepJournal(memoryview(bytearray(REGION_SIZE)), init=True)


def test_a_step_publishes_replies_then_consumes() -> None:
    inbound, outbound, journal = world()
    app = CountingEcho()
    stepper = LogicStepper(inbound, outbound, journal, app)
    conn = conn_id(0, 1)
    two = wire(b"hi") + wire(b"there")  # what one recv completed
    inbound.push_many([encode(Kind.OPENED, conn, b"peer"), encode(Kind.MESSAGE, conn, two)])
    assert stepper.step() == 2
    assert stepper.step() == 0
    assert app.calls == 2  # one call per frame; the replies share one code
    assert [decode(c) for c in outbound.pop_many()] == [(Kind.SEND, conn, two)]
    assert inbound.empty()


def test_replies_wait_for_room_without_running_the_app_again() -> None:
    inbound, outbound, journal = world(out_capacity=200)
    app = CountingEcho()
    stepper = LogicStepper(inbound, outbound, journal, app)
    conn = conn_id(3, 1)
    outbound.push(b"x" * 150)  # the connect process has not drained this yet
    inbound.push(encode(Kind.MESSAGE, conn, wire(b"y" * 60)))
    assert stepper.step() == LogicStepper.BLOCKED
    assert stepper.step() == LogicStepper.BLOCKED
    assert app.calls == 1 and not inbound.empty()  # held, not consumed, not redone
    outbound.pop()
    assert stepper.step() == 1
    assert app.calls == 1 and inbound.empty()
    assert decode(outbound.pop() or b"") == (Kind.SEND, conn, wire(b"y" * 60))


def test_the_replies_to_one_request_are_capped_at_the_queue() -> None:
    outbox = Outbox(limit=100)
    conn = Conn(1, "peer", outbox)
    conn.send(b"a" * 70)
    conn.send(b"b" * 10)  # joins the first code
    with pytest.raises(CodeTooLarge, match="raise --queue-bytes"):
        conn.send(b"c" * 10)
    codes, size = outbox.take()
    assert codes == [encode(Kind.SEND, 1, b"a" * 70 + b"b" * 10)] and size == 93


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_a_reply_is_framed_as_it_was_sent_even_if_the_app_changes_its_buffer(kind: type) -> None:
    framing = LengthFraming()
    outbox = Outbox(10_000, framing.encode, framing.header_of)
    conn = Conn(1, "peer", outbox)
    buf = bytearray(b"first")
    conn.send(kind(buf))
    conn.send(b"")  # an empty frame is a header alone
    conn.send(kind(b"third"))
    buf[:] = b"XXXXX"  # after send: the reply must not change (a bytearray, a view of it)
    codes, size = outbox.take()
    wire_ = framing.encode(b"first") + framing.encode(b"") + framing.encode(b"third")
    assert codes == [encode(Kind.SEND, 1, wire_)] and size == len(codes[0]) + 4


def test_app_errors_are_counted_and_the_rest_goes_on() -> None:
    class Flaky:
        def on_message(self, conn, payload):  # type: ignore[no-untyped-def]
            if payload == b"bad":
                raise ValueError("no")
            conn.send(payload)

    outbox = Outbox(limit=10_000)
    d = Dispatcher(Flaky(), outbox)
    d.handle(encode(Kind.MESSAGE, conn_id(0, 1), wire(b"ok1") + wire(b"bad") + wire(b"ok2")))
    d.handle(encode(Kind.MESSAGE, conn_id(0, 1), wire(b"torn")[:-1]))  # lengths do not chain
    d.handle(b"\x63" + bytes(8))  # an unknown kind
    d.handle(b"short")
    assert d.errors == 4
    codes, size = outbox.take()
    assert [decode(c).body for c in codes] == [b"ok1ok2"]  # as is: no framing given
    assert size == len(codes[0]) + 4


@pytest.mark.parametrize(
    "change, option",
    [
        ({"port": 70000}, "--port"),
        ({"framing": "xml"}, "--framing"),
        ({"max_conns": 0}, "--max-conns"),
        ({"queue_bytes": 1000}, "--queue-bytes"),
        ({"idle_timeout": -1}, "--idle-timeout"),
        ({"out_buffer": 10}, "--out-buffer"),
    ],
)
def test_bad_configuration_names_the_option(change: dict[str, object], option: str) -> None:
    with pytest.raises(ConfigError) as err:
        ServerConfig(**change).validate()  # type: ignore[arg-type]
    assert str(err.value).startswith(option)


def test_config_travels_as_json() -> None:
    cfg = ServerConfig(app="chat", port=0, framing="line").validate()
    assert ServerConfig.from_json(cfg.to_json()) == cfg


def test_apps_are_named_clearly() -> None:
    assert load_app("echo").__name__ == "Echo"
    with pytest.raises(ConfigError, match="no attribute"):
        load_app("server.core.apps:Nope")
    with pytest.raises(ConfigError, match="MODULE:ATTR"):
        load_app("nothing")
