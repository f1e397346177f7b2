"""The shapes every part shares: the error tree, the placed-object protocol,
the supervisor's stop phases and the inspector's formatting (all pure)."""

from __future__ import annotations

import inspect
import pickle

import pytest

import server
from server import errors
from server.cli.inspect import format_status
from server.core.allocator import SharedMemory
from server.core.config import ServerConfig
from server.core.header import HEADER_SIZE, StartMode
from server.core.placed import merge_report
from server.core.supervision import StopEvent, StopPhase, describe_exit, next_phase
from server.ipc.segment import KINDS, objects, segment_size, server_layout

ERRORS = [
    cls
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, errors.ServerError)
]


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_every_error_pickles_with_its_fields_and_is_exported(cls: type[errors.ServerError]) -> None:
    fields = {
        name: (1234 if p.annotation.startswith("int") else "value")
        for name, p in inspect.signature(cls).parameters.items()
        if p.kind is p.KEYWORD_ONLY
    }
    err = cls("what went wrong, and what to do", **fields)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls and str(back) == "what went wrong, and what to do"
    assert {name: getattr(back, name) for name in fields} == fields
    assert cls.__doc__ and cls.__name__ in server.__all__


def test_the_builtins_they_refine() -> None:
    assert issubclass(errors.FrameTooLarge, ValueError)
    assert issubclass(errors.SegmentPermissionError, PermissionError)
    assert issubclass(errors.CannotListen, OSError)
    assert issubclass(errors.ServerUnreachable, ConnectionError)
    assert issubclass(errors.BadCode, errors.CorruptSegment)


@pytest.mark.parametrize(
    ("events", "phase"),
    [
        ([], StopPhase.RUNNING),
        ([StopEvent.STOP_REQUESTED], StopPhase.STOPPING_CONNECT),
        ([StopEvent.STOP_REQUESTED, StopEvent.STOP_REQUESTED], StopPhase.STOPPING_CONNECT),
        ([StopEvent.STOP_REQUESTED, StopEvent.CONNECT_EXITED], StopPhase.STOPPING_LOGIC),
        ([StopEvent.STOP_REQUESTED, StopEvent.SECOND_REQUEST], StopPhase.DONE),
        (
            [StopEvent.STOP_REQUESTED, StopEvent.CONNECT_EXITED, StopEvent.LOGIC_EXITED],
            StopPhase.DONE,
        ),
        # a worker that dies while the server runs is restarted, not a stop
        ([StopEvent.CONNECT_EXITED, StopEvent.LOGIC_EXITED], StopPhase.RUNNING),
        ([StopEvent.STOP_REQUESTED, StopEvent.LOGIC_EXITED], StopPhase.STOPPING_CONNECT),
    ],
)
def test_stop_phases(events: list[StopEvent], phase: StopPhase) -> None:
    now = StopPhase.RUNNING
    for event in events:
        now = next_phase(now, event)
    assert now is phase


def test_exit_status_in_words() -> None:
    assert describe_exit(3) == "exited with status 3"
    assert describe_exit(-9) == "killed by signal 9"
    assert describe_exit(-9, "SIGKILL") == "killed by SIGKILL"


def test_every_kind_places_and_reports_the_same_way_on_a_bytearray() -> None:
    cfg = ServerConfig(queue_bytes=200_000, max_conns=7).validate()
    objs = [(n, cls, p) for n, cls, p in objects(cfg) if cls.KIND != "CodeQueue"]
    layout = [(n, cls.KIND, cls.region_size(p)) for n, cls, p in objs]
    buf = bytearray(segment_size(layout))
    shm = SharedMemory(buf, StartMode.INIT)
    placed = [cls.place(shm, n, p) for n, cls, p in objs]
    assert [(p.name, p.kind, p.size) for p in shm.placements()] == layout
    found = SharedMemory(buf, StartMode.RECOVER)
    report: dict[str, object] = {}
    for p in found.placements():
        kind = KINDS[p.kind]
        assert kind.region_size(kind.param_of(p.size)) == p.size  # param_of inverts region_size
        merge_report(
            report, kind.place(found, p.name, kind.param_of(p.size), observer=True).report(p.name)
        )
    assert report["connections"] == 0 and report["set_aside"] == 0 and "processes" in report
    assert report["set_aside_kept"] == 0 and report["room_steps"] == 0
    found.detach()
    shm.detach()
    assert len(placed) == 6


def test_the_server_layout_starts_after_the_header() -> None:
    layout = server_layout(ServerConfig())
    assert [name for name, _, _ in layout] == [
        "inbound",
        "outbound",
        "journal",
        "status",
        "conns",
        "setaside",
        "streams",
        "busjournal",
    ]
    assert segment_size(layout) > HEADER_SIZE + 2 * ServerConfig().queue_bytes
    assert KINDS["CodeQueue"].param_of(layout[0][2]) == ServerConfig().queue_bytes


def test_merge_report_merges_one_level_deep() -> None:
    into: dict[str, object] = {"queues": {"inbound": 1}}
    merge_report(into, {"queues": {"outbound": 2}, "connections": 3})
    assert into == {"queues": {"inbound": 1, "outbound": 2}, "connections": 3}


def test_format_status_is_a_pure_table() -> None:
    info = {
        "segment": {"key": "0x53544350", "id": 7, "size": 8192, "mode": "0600", "attached": 3},
        "start_mode": "recover",
        "generation": 2,
        "processes": {
            "logic": {
                "pid": 42,
                "alive": True,
                "restarts": 1,
                "heartbeat": 9,
                "last_start": "killed by signal 9",
            }
        },
        "queues": {
            "inbound": {"pending": 5, "used_bytes": 60, "free_bytes": 4, "pushed": 9, "popped": 4}
        },
        "connections": 2,
        "codes_processed": 4,
        "objects": [{"name": "inbound", "kind": "CodeQueue", "offset": 4096, "size": 320}],
    }
    text = format_status(info)
    assert "key 0x53544350" in text and "mode 0600" in text and "generation 2" in text
    assert "logic" in text and "killed by signal 9" in text
    assert "inbound" in text.splitlines()[-1] and "4096" in text
    assert "connections open 2; codes processed 4" in text


def test_a_stop_waits_while_work_moves_and_gives_up_when_it_stands_still() -> None:
    from server.core.supervision import Stall, stop_leftover

    stall = Stall(timeout=30.0, now=0.0)
    for t in range(0, 300, 10):  # 5 minutes of a slowly moving backlog
        assert not stall.expired((t, t), float(t))
    assert not stall.expired((290, 290), 319.0)
    assert stall.expired((290, 290), 320.0)
    text = stop_leftover(30.0, 5, 2, 100)
    assert "nothing moved for 30 s" in text and "5 code(s) inbound, 2 outbound" in text
