"""The relay is supervised: a relay process killed or frozen is restarted
by its supervisor, and ``inspect --bus`` shows the processes and links.

Two relay programs on the loopback addresses 127.0.0.2 (h1) and 127.0.0.3
(h2), real signals; the link board and its table are tested on plain
bytes and dicts."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from server.bus import Bus
from server.cli.busview import format_bus
from server.core.linkboard import REGION_SIZE, LinkBoard, LinkState
from server.errors import CorruptSegment
from server.ipc.procinfo import alive
from tools.busrig import ROOT, Relays, relay_pid, remove_queues, write_config

pytestmark = pytest.mark.timeout(90)


# -- the link board, on a bytearray ---------------------------------------------------
def test_the_link_board_keeps_its_numbers_for_the_same_hosts_and_resets_for_others() -> None:
    raw = bytearray(REGION_SIZE)
    board = LinkBoard(memoryview(raw), init=True)
    h2, h3 = board.open(["h2", "h3"])
    h2.out_state[0] = LinkState.UP
    h2.out_sent[0], h2.out_acked[0], h2.out_ups[0] = 7, 5, 3
    h3.in_applied[0], h3.in_state[0] = 9, LinkState.DOWN
    report = board.report("links")["links"]
    assert report["h2"]["out_state"] == "up" and report["h2"]["out_reconnects"] == 2
    assert (report["h2"]["out_sent"], report["h2"]["out_acked"]) == (7, 5)
    assert report["h3"]["in_state"] == "down" and report["h3"]["in_applied"] == 9
    again = LinkBoard(memoryview(raw), init=False)  # a restarted relay: goes on counting
    assert again.open(["h2", "h3"])[0].out_sent[0] == 7
    other = LinkBoard(memoryview(raw), init=False)  # the hosts changed: from zero
    assert other.open(["h2", "h4"])[0].out_sent[0] == 0
    assert list(other.report("links")["links"]) == ["h2", "h4"]


def test_a_corrupt_link_board_is_a_clear_error_never_an_out_of_range_read() -> None:
    raw = bytearray(REGION_SIZE)
    LinkBoard(memoryview(raw), init=True).open(["h2"])
    raw[64 + 64] = 99  # h2's out_state: no such state
    assert LinkBoard(memoryview(raw), init=False).report("links")["links"]["h2"]["out_state"] == (
        "unknown state 99 (corrupt?)"
    )
    raw[8] = 200  # the slot count, beyond the 32 slots
    with pytest.raises(CorruptSegment, match="200 links, at most 32"):
        LinkBoard(memoryview(raw), init=False).report("links")
    raw[0] ^= 0xFF
    with pytest.raises(CorruptSegment, match="link board magic"):
        LinkBoard(memoryview(raw), init=False)


def test_the_bus_table_shows_processes_links_and_queues() -> None:
    info = {
        "host": "h1",
        "listen": "127.0.0.2:7201",
        "relay": {
            "processes": {
                "supervisor": {
                    "pid": 10,
                    "alive": True,
                    "state": "running",
                    "restarts": 0,
                    "heartbeat_age_ms": 20,
                    "last_start": "first start",
                },
                "relay": {
                    "pid": 11,
                    "alive": False,
                    "state": "running",
                    "restarts": 2,
                    "heartbeat_age_ms": 900,
                    "last_start": "killed by signal 9",
                },
            },
            "links": {
                "h2": {
                    "out_state": "up",
                    "out_since": 1_000_000,
                    "out_sent": 70,
                    "out_acked": 64,
                    "out_bytes": 5000,
                    "out_reconnects": 1,
                    "in_state": "down",
                    "in_since": 1_000_000,
                    "in_applied": 33,
                    "in_bytes": 900,
                    "in_ups": 3,
                },
            },
        },
        "queues": [
            {
                "kind": "inbox",
                "name": "1.0.0.1",
                "key": "0x00000001",
                "pending": 2,
                "used": 80,
                "capacity": 65536,
                "taken": 31,
            },
            {"kind": "outbox", "name": "h2", "key": "0x00000002"},
        ],
    }
    text = format_bus(info, now=1_030.0)
    assert "relay      pid 11       gone" in text, text  # a dead pid is not "running"
    assert "restarts 2 (last start: killed by signal 9)" in text
    out = next(line for line in text.splitlines() if "h1 -> h2" in line).split()
    assert out[3:] == ["up", "30", "s", "70", "64", "5000", "1"], out
    back = next(line for line in text.splitlines() if "h2 -> h1" in line).split()
    assert back[3:] == ["down", "30", "s", "33", "900", "2"], back
    assert "2 waiting, 80/65536 bytes, 31 received" in text
    assert "outbox -> h2" in text and "not made yet" in text
    never = format_bus({"host": "h2", "listen": "x:1", "relay": None, "queues": []})
    assert "never started" in never


# -- two supervised relays --------------------------------------------------------------
def _free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


@pytest.fixture
def relays(tmp_path: Path) -> Iterator[Relays]:
    listens = {h: f"{ip}:{_free_port(ip)}" for h, ip in (("h1", "127.0.0.2"), ("h2", "127.0.0.3"))}
    config = write_config(tmp_path / "bus.toml", listens, {"1.0.0.1": "h1", "2.0.0.1": "h2"})
    rig = Relays(config, options=("--hang-timeout", "1"))
    rig.start("h1")
    rig.start("h2")
    try:
        yield rig
    finally:
        rig.stop()
        remove_queues(config)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def _view(config: str, host: str) -> dict:  # type: ignore[type-arg]
    out = _cli("inspect", "--bus", config, "--host", host, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)[0]  # type: ignore[no-any-return]


def _until(what: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_killed_relay_process_is_restarted_and_inspect_shows_its_links(relays: Relays) -> None:
    with (
        Bus.open("1.0.0.1", config=relays.config) as a,
        Bus.open("2.0.0.1", config=relays.config) as b,
    ):
        for i in range(10):
            assert a.send("2.0.0.1", b"m%d" % i, timeout=5)
        assert [b.recv(timeout=10) for _ in range(10)] == [
            ("1.0.0.1", b"m%d" % i) for i in range(10)
        ]
        first = relay_pid(relays.config, "h1")
        os.kill(first, signal.SIGKILL)
        _until(lambda: relay_pid(relays.config, "h1") != first)
        for i in range(10, 20):
            assert a.send("2.0.0.1", b"m%d" % i, timeout=5)
        assert [b.recv(timeout=10) for _ in range(10)] == [
            ("1.0.0.1", b"m%d" % i) for i in range(10, 20)
        ]
        assert b.recv(timeout=0.3) is None  # nothing twice
    _until(lambda: _view(relays.config, "h1")["relay"]["links"]["h2"]["out_acked"] == 20)
    view = _view(relays.config, "h1")
    relay = view["relay"]["processes"]["relay"]
    assert relay["restarts"] == 1 and "killed by signal 9" in relay["last_start"], relay
    assert relay["alive"] and relay["pid"] != first
    link = view["relay"]["links"]["h2"]
    assert link["out_state"] == "up" and link["out_sent"] == 20 and link["out_reconnects"] == 1
    assert link["out_bytes"] > 20 * 10
    far = _view(relays.config, "h2")
    assert far["relay"]["links"]["h1"]["in_applied"] == 20
    inbox = next(q for q in far["queues"] if q["kind"] == "inbox")
    assert inbox["taken"] == 20 and inbox["pending"] == 0
    log = relays.logs["h1"].read_text()
    assert f"the relay (pid {first}) ended: killed by SIGKILL" in log, log[-2000:]
    assert "restarted the relay of host h1" in log


def test_a_frozen_relay_is_killed_as_hung_and_restarted(relays: Relays) -> None:
    frozen = relay_pid(relays.config, "h2")
    os.kill(frozen, signal.SIGSTOP)
    try:
        _until(lambda: relay_pid(relays.config, "h2") != frozen)
    finally:
        if alive(frozen):
            os.kill(frozen, signal.SIGKILL)
    log = relays.logs["h2"].read_text()
    assert "hung: no heartbeat for" in log and "(--hang-timeout 1)" in log, log[-2000:]
    view = _view(relays.config, "h2")
    assert "hung: no heartbeat for 1 s" in view["relay"]["processes"]["relay"]["last_start"]
    with (
        Bus.open("2.0.0.1", config=relays.config) as b,
        Bus.open("1.0.0.1", config=relays.config) as a,
    ):
        assert b.send("1.0.0.1", b"after the thaw", timeout=5)
        assert a.recv(timeout=10) == ("2.0.0.1", b"after the thaw")


def test_the_relay_dies_with_its_supervisor_and_a_stop_is_clean(relays: Relays) -> None:
    worker = relay_pid(relays.config, "h1")
    os.kill(worker, signal.SIGSTOP)  # it cannot notice anything itself
    relays.kill("h1")  # SIGKILL the supervisor
    _until(lambda: not alive(worker), timeout=5)  # the kernel kills the relay it ran
    relays.start("h1")
    _until(lambda: relay_pid(relays.config, "h1") != worker)
    second = _cli("relay", "--config", relays.config, "--host", "h1")
    assert second.returncode != 0
    assert "cannot listen on 127.0.0.2" in second.stderr and "another relay" in second.stderr
    worker = relay_pid(relays.config, "h1")
    proc = relays.procs["h1"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    assert not alive(worker)
    log = relays.logs["h1"].read_text()
    assert f"the relay of host h1 (pid {worker}) stopped" in log, log[-2000:]
    assert _view(relays.config, "h1")["relay"]["processes"]["relay"]["pid"] is None


def test_a_bad_hang_timeout_is_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path / "bus.toml", {"h1": "127.0.0.2:1"}, {"a": "h1"})
    out = _cli("relay", "--config", config, "--host", "h1", "--hang-timeout", "0")
    assert out.returncode != 0 and "--hang-timeout 0.0: seconds > 0" in out.stderr
