"""SIGHUP: both workers restart with the code on disk; no client notices.

Real processes, a real SIGHUP to the supervisor, real sockets: a client
sending requests all through the reload and one in the middle of a frame keep their
connections, every reply comes exactly once and in order, and the replies
after the reload come from the new version of the app's file.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from helpers.server import HELPERS, EchoClient, frame

pytestmark = pytest.mark.timeout(90)

APP = """
import time


class App:
    framing = "length"

    def on_message(self, conn, payload):
        time.sleep(0.002)  # requests pile up: some are in flight at the SIGHUP
        conn.send(b"{version}:" + payload)
"""


def write_app(folder: Path, version: str) -> None:
    (folder / "reloadable.py").write_text(APP.replace("{version}", version))
    for cached in (folder / "__pycache__").glob("reloadable*"):
        cached.unlink()


def started(tmp_path: Path, start_server, *args: str):  # type: ignore[no-untyped-def]
    write_app(tmp_path, "v1")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(HELPERS)])}
    return start_server("--app", "reloadable:App", *args, env=env)


def test_sighup_reloads_both_workers_and_no_byte_is_lost(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = started(tmp_path, start_server)
    busy, halfway = EchoClient(server.port), EchoClient(server.port)
    assert busy.request(b"first") == b"v1:first"
    assert halfway.request(b"first") == b"v1:first"
    pids = {r: server.pid(r) for r in ("connect", "logic")}

    count = 500

    def keep_sending() -> None:  # a steady stream across the reload, ~1.5 s
        for i in range(count):
            busy.sock.sendall(frame(b"%d" % i))
            time.sleep(0.003)

    sender = threading.Thread(target=keep_sending)
    sender.start()
    halfway.sock.sendall(frame(b"split across the reload")[:9])
    time.sleep(0.2)
    write_app(tmp_path, "v2")
    assert server.proc is not None
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for(
        lambda i: all(
            i["processes"][r]["pid"] not in (None, pids[r]) and i["processes"][r]["alive"]
            for r in ("connect", "logic")
        ),
        what="both workers replaced",
    )
    halfway.sock.sendall(frame(b"split across the reload")[9:])
    assert halfway.recv() == b"v2:split across the reload"

    replies = [busy.recv() for _ in range(count)]
    sender.join()
    versions = [r.split(b":")[0] for r in replies if r]
    assert [r.split(b":", 1)[1] for r in replies if r] == [b"%d" % i for i in range(count)]
    assert versions == sorted(versions)  # v1 replies, then v2 ones
    assert versions.count(b"v1") > 0 and versions.count(b"v2") > 0, versions
    assert busy.request(b"after") == b"v2:after"  # the same connection, the new code

    log = server.log()
    assert "SIGHUP: restarting the workers gracefully" in log
    assert "handed 2 connection(s)" in log and "took over 2 connection(s)" in log
    assert "finished its step and exited" in log
    assert "lost" not in log and "closed connection" not in log
    assert server.stop() == 0


def test_a_connect_that_cannot_hand_over_is_killed_and_serving_goes_on(
    start_server, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    server = started(tmp_path, start_server, "--hang-timeout", "1")
    stuck = EchoClient(server.port)
    assert stuck.request(b"hi") == b"v1:hi"
    old = server.pid("connect")
    os.kill(old, signal.SIGSTOP)  # it will never answer READY
    assert server.proc is not None
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 15
    while "did not hand over its clients within 1 s" not in server.log():
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.1)
    assert stuck.closed_by_server(5)  # lost, as after a crash (and said so in the log)
    fresh = EchoClient(server.port)
    assert fresh.request(b"new") == b"v1:new"
    assert "the others are lost" in server.log()
    assert server.stop() == 0


def test_a_second_sighup_during_a_reload_is_ignored(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = started(tmp_path, start_server)
    c = EchoClient(server.port)
    assert server.proc is not None
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "SIGHUP: restarting the workers" not in server.log():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    server.proc.send_signal(signal.SIGHUP)  # the new workers are still starting
    time.sleep(2)
    assert c.request(b"still here") == b"v1:still here"
    log = server.log()
    assert log.count("SIGHUP: restarting the workers") == 1, log
    assert "SIGHUP ignored: the previous one is still under way" in log
    assert server.stop() == 0
