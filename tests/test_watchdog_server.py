"""The watchdog on the real server: slow is not hung, frozen is replaced,
a kill is followed by a restart at once, corruption does not loop forever.

Real processes, real signals, real TCP clients on 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.server import HELPERS, EchoClient, ServerProc, frame

from server import SHMFactory


def restarts(server: ServerProc) -> int:
    return sum(p["restarts"] for r, p in server.info()["processes"].items() if r != "supervisor")


def test_a_slow_app_is_not_killed_as_hung(start_server) -> None:  # type: ignore[no-untyped-def]
    # 5 ms per request, 1200 requests in one write: 6 s in one step, one code
    server: ServerProc = start_server("--app", "test_apps:SlowEcho", "--hang-timeout", "1")
    c = EchoClient(server.port, timeout=60)
    requests = [b"r%d" % i for i in range(1200)]
    c.sock.sendall(b"".join(frame(r) for r in requests))
    assert [c.recv() for _ in requests] == requests
    assert restarts(server) == 0
    assert "killing" not in server.log()


def test_two_seconds_per_request_is_slow_not_hung(start_server) -> None:  # type: ignore[no-untyped-def]
    server: ServerProc = start_server("--app", "test_apps:SleepyEcho", "--hang-timeout", "1")
    clients = [EchoClient(server.port, timeout=60) for _ in range(2)]
    clients[0].sock.sendall(b"".join(frame(b"s%d" % i) for i in range(3)))
    clients[1].send(b"other")
    assert [clients[0].recv() for _ in range(3)] == [b"s0", b"s1", b"s2"]
    assert clients[1].recv() == b"other"
    assert restarts(server) == 0


def test_a_request_that_never_ends_is_killed_and_set_aside_alone(start_server) -> None:  # type: ignore[no-untyped-def]
    server: ServerProc = start_server(
        "--app", "test_apps:Spinner", "--hang-timeout", "1", "--request-timeout", "1"
    )
    victim = EchoClient(server.port, timeout=60)
    bystander = EchoClient(server.port, timeout=60)
    # one write, so one code: the spinning request and its neighbours
    victim.sock.sendall(frame(b"before") + frame(b"spin") + frame(b"after"))
    assert victim.recv() == b"before"
    assert victim.recv() == b"after"  # answered although it came in the same read
    assert bystander.request(b"fine") == b"fine"
    info = server.info()
    assert info["set_aside"] == 1 and info["last_set_aside"]["size"] == 4
    log = server.log()
    assert log.count("is slow: one request has run for") >= 3
    assert "in spin_forever" in log and "in on_message" in log  # its stack, before each kill
    assert "set aside request 2 of 3 (4 bytes)" in log
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "server",
            "inspect",
            "--key",
            hex(server.key),
            "--set-aside",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    [kept] = __import__("json").loads(shown.stdout)
    assert (kept["payload_text"], kept["size"], kept["attempts"]) == ("spin", 4, 3)
    table = subprocess.run(
        [sys.executable, "-m", "server", "inspect", "--key", hex(server.key)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "poison requests set aside 1 (inspect --set-aside shows them)" in table
    assert "run/" in table and " ms " in table  # restarts in this run and the beat age


@pytest.mark.parametrize("role", ["logic", "connect"])
def test_a_stopped_worker_is_replaced_within_the_hang_timeout(start_server, role: str) -> None:  # type: ignore[no-untyped-def]
    server: ServerProc = start_server("--hang-timeout", "1")
    c = EchoClient(server.port)
    assert c.request(b"before") == b"before"
    victim = server.pid(role)
    os.kill(victim, signal.SIGSTOP)
    stopped_at = time.monotonic()
    server.wait_for(
        lambda i: (
            i["processes"][role]["pid"] not in (None, victim) and i["processes"][role]["alive"]
        ),
        timeout=10,
        what=f"{role} replaced",
    )
    assert time.monotonic() - stopped_at < 1 + 1.5  # hang timeout + 1 s (+ the check interval)
    assert "it is stopped (SIGSTOP?), so it cannot show its stack" in server.log()
    if role == "connect":
        c = EchoClient(server.port)  # its connections went with it
    assert c.request(b"after") == b"after"


def test_twenty_kills_of_logic_under_load_each_resume_quickly(tmp_path: Path) -> None:
    path = os.pathsep.join([str(HELPERS.parent.parent), os.environ.get("PYTHONPATH", "")])
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.chaos",
            "--kill",
            "logic",
            "--count",
            "20",
            "--every",
            "0.3",
            "--json",
            "--log",
            str(tmp_path / "server.log"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=path),
        cwd=HELPERS.parent.parent,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    report = __import__("json").loads(out.stdout[: out.stdout.rindex("}") + 1])
    assert report["faults"] == 20 and report["lost"] == 0 and report["duplicated"] == 0
    assert report["restarts"] == 20
    assert report["kill_to_next_reply_ms"]["max"] < 500


def test_a_corrupt_segment_is_saved_and_serving_again_within_10_s(
    start_server, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    server: ServerProc = start_server(env={"STCP_STATE_DIR": str(tmp_path)})
    c = EchoClient(server.port)
    assert c.request(b"before") == b"before"
    info = server.info()
    inbound = next(o for o in info["objects"] if o["name"] == "inbound")
    shm = SHMFactory.attach(server.key)
    try:
        # the inbound queue's tail counter (word 8 of its control block) -> impossible
        words = memoryview(shm._live())[inbound["offset"] : inbound["offset"] + 256].cast("Q")
        words[8] = words[16] + (1 << 40)
        words.release()
    finally:
        shm.detach()
    start = time.monotonic()
    deadline = start + 10
    while True:
        try:
            fresh = EchoClient(server.port, timeout=2)
            if fresh.request(b"after") == b"after":
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.2)
    log = server.log()
    assert "found the segment corrupt twice in a row: saved a copy to" in log
    copies = list(tmp_path.glob("stcp-segment-*.bin"))
    assert len(copies) == 1 and copies[0].stat().st_mode & 0o777 == 0o600
    assert copies[0].stat().st_size == info["segment"]["size"]


@pytest.mark.parametrize(
    ("app", "says"),
    [
        ("test_apps:NoHandlers", "has none of on_open, on_message, on_close"),
        (
            "test_apps:FailsToStart",
            "making the app failed: RuntimeError: cannot reach the database",
        ),
        ("test_apps:Missing", "has no attribute 'Missing'"),
    ],
)
def test_a_bad_app_is_an_error_before_listening(app: str, says: str, key: int) -> None:
    path = os.pathsep.join([str(HELPERS), os.environ.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-m", "server", "run", "--port", "0", "--key", hex(key), "--app", app],
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ, PYTHONPATH=path),
    )
    assert out.returncode == 2
    assert says in out.stderr and "listening" not in out.stdout
    assert not SHMFactory.exists(key)


def test_systemd_hears_ready_watchdog_status_and_stopping(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(10)
    server: ServerProc = start_server(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "500000"})
    heard: list[str] = []

    def hear(what: str) -> None:
        deadline = time.monotonic() + 10
        while not any(what in m for m in heard):
            assert time.monotonic() < deadline, heard
            heard.append(sock.recv(4096).decode())

    hear("READY=1")
    hear("WATCHDOG=1")
    os.kill(server.pid("logic"), signal.SIGKILL)
    hear("STATUS=restarted the logic process")
    assert server.stop() == 0
    hear("STOPPING=1")
    sock.close()
