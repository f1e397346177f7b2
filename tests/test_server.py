"""The server as users run it: real processes, real TCP clients on 127.0.0.1."""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest
from helpers.server import EchoClient, LineClient, frame


def test_echo_many_connections_every_size(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("--max-frame", "65536")
    clients = [EchoClient(server.port) for _ in range(40)]
    sizes = [0, 1, 2, 3, 100, 4095, 4096, 20000, 65535, 65536]
    for i, c in enumerate(clients):  # all in flight at once
        for size in sizes:
            c.send(bytes([i]) * size)
    for i, c in enumerate(clients):
        for size in sizes:
            assert c.recv() == bytes([i]) * size
    info = server.info()
    assert info["connections"] == 40
    inbound = info["queues"]["inbound"]
    assert info["codes_processed"] == inbound["pushed"] and inbound["pending"] == 0
    for c in clients:
        c.close()


def test_frames_fed_one_byte_at_a_time(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server()
    c = EchoClient(server.port)
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    wire = frame(b"first") + frame(b"") + frame(b"third one")
    for b in wire:
        c.sock.sendall(bytes([b]))
        time.sleep(0.001)
    assert [c.recv(), c.recv(), c.recv()] == [b"first", b"", b"third one"]
    c.close()


def test_frame_over_the_limit_closes_only_that_connection(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("--max-frame", "1000")
    good = EchoClient(server.port)
    bad = EchoClient(server.port)
    assert good.request(b"x" * 1000) == b"x" * 1000
    bad.sock.sendall(struct.pack(">I", 1001))  # announcing is enough
    assert bad.closed_by_server()
    assert good.request(b"still here") == b"still here"
    info = server.wait_for(lambda i: i["counters"]["closed_for_abuse"] == 1)
    assert info["connections"] == 1
    assert "frame too large" in server.log()


def test_garbage_half_frames_and_resets_leave_others_alone(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("--max-frame", "4096")
    good = EchoClient(server.port)
    for _ in range(20):
        half = socket.create_connection(("127.0.0.1", server.port))
        half.sendall(frame(b"y" * 100)[:50])  # half a frame, then a reset
        half.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        half.close()
        junk = socket.create_connection(("127.0.0.1", server.port))
        junk.sendall(b"GET / HTTP/1.1\r\n\r\n")  # garbage: announces a huge frame
        junk.close()
        assert good.request(b"ping") == b"ping"
    info = server.wait_for(lambda i: i["connections"] == 1, what="only the good client left")
    assert info["counters"]["connections_accepted"] == 41


def test_connection_flood_and_idle_timeout(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("--max-conns", "5", "--idle-timeout", "1.5")
    kept = [EchoClient(server.port) for _ in range(5)]
    for c in kept:
        assert c.request(b"hi") == b"hi"
    for _ in range(20):  # a flood beyond the limit is told and closed
        extra = EchoClient(server.port)
        assert extra.recv() == b"server full: too many connections"
        assert extra.recv() is None
        extra.close()
    assert server.info()["counters"]["connections_refused"] == 20
    # one client stays busy; the others go idle and are closed
    busy = kept[0]
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        assert busy.request(b"busy") == b"busy"
        time.sleep(0.2)
    for idle in kept[1:]:
        assert idle.closed_by_server(timeout=1)
    assert server.info()["connections"] == 1
    assert "idle for" in server.log()


def test_client_that_does_not_read_is_paused_then_closed(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("--out-buffer", "70000", "--send-timeout", "1.5", "--max-frame", "65536")
    hog = socket.create_connection(("127.0.0.1", server.port))
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hog.settimeout(0.2)
    sent = 0
    try:
        for _ in range(2000):  # never reads: the server stops reading from it
            hog.sendall(frame(b"z" * 60000))
            sent += 1
    except (TimeoutError, BrokenPipeError, ConnectionResetError):
        pass
    assert sent < 2000, "the server kept reading from a client that reads nothing"
    good = EchoClient(server.port)
    assert good.request(b"unaffected") == b"unaffected"
    server.wait_for(
        lambda i: i["counters"]["closed_for_abuse"] == 1, timeout=10, what="the hog closed"
    )
    log = server.log()  # over 4x the buffer, or stalled for the send timeout
    assert "does not read its replies" in log or "took no reply bytes" in log
    assert good.request(b"still fine") == b"still fine"
    hog.close()


def test_full_inbound_queue_pushes_back_and_loses_nothing(start_server) -> None:  # type: ignore[no-untyped-def]
    # queues of 8 KiB and a slow app: the connect process must stop reading
    server = start_server(
        "--app", "test_apps:SlowEcho", "--queue-bytes", "8192", "--max-frame", "1024"
    )
    clients = [EchoClient(server.port, timeout=30) for _ in range(8)]
    per_client = 60
    payloads = {i: [b"%d-%d-" % (i, n) + b"p" * 900 for n in range(per_client)] for i in range(8)}

    def blast(i: int) -> None:
        clients[i].sock.sendall(b"".join(frame(p) for p in payloads[i]))

    threads = [threading.Thread(target=blast, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for i, c in enumerate(clients):
        got = [c.recv() for _ in range(per_client)]
        assert got == payloads[i]
    for t in threads:
        t.join()
    info = server.info()
    assert info["queues"]["inbound"]["pending"] == 0
    assert info["codes_processed"] == info["queues"]["inbound"]["pushed"]


def test_chat_broadcast_and_user_limit(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("--app", "chat", "--max-conns", "3")
    users = []
    for _ in range(3):
        u = LineClient(server.port)
        assert u.line().startswith("* welcome, you are user")
        users.append(u)
    a, b, c = users
    assert [a.line(), a.line()] == ["* user1 joined", "* user2 joined"]
    assert b.line() == "* user2 joined"
    full = LineClient(server.port)
    assert "too many users" in full.line()
    assert full.line() == ""  # closed
    full.close()
    a.say("hello from a")
    assert b.line() == c.line() == "user0: hello from a"
    c.say("and from c")
    assert a.line() == b.line() == "user2: and from c"
    # the senders got no copy of their own lines: the next thing a sees is b's
    b.say("b here")
    assert a.line() == c.line() == "user1: b here"
    c.close()
    assert a.line() == b.line() == "* user2 left"
    for u in users:
        u.close()


def test_cannot_run_twice_or_clean_while_running(start_server, key) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    server = start_server()
    again = subprocess.run(
        [sys.executable, "-m", "server", "run", "--port", "0", "--key", hex(key)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert again.returncode == 1
    assert "already running" in again.stderr
    clean = subprocess.run(
        [sys.executable, "-m", "server", "clean", "--key", hex(key)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert clean.returncode == 1 and "is the server running?" in clean.stderr
    assert EchoClient(server.port).request(b"alive") == b"alive"


def test_graceful_stop_delivers_what_is_queued(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("--app", "test_apps:SlowEcho")
    c = EchoClient(server.port)
    for n in range(100):  # 0.5 s of work queued
        c.send(b"%d" % n)
    assert c.recv() == b"0"
    assert server.stop() == 0
    assert [c.recv() for _ in range(99)] == [b"%d" % n for n in range(1, 100)]
    assert c.recv() is None
    assert "stopped; the segment stays" in server.log()
    again = start_server(log_name="second.log")
    assert again.info()["start_mode"] == "recover"
    info = again.info()
    assert info["codes_processed"] == info["queues"]["inbound"]["pushed"]


@pytest.mark.parametrize("bad", [["--app", "no_such_module:App"], ["--queue-bytes", "100"]])
def test_bad_options_are_named(bad: list[str], key: int) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "server", "run", "--port", "0", "--key", hex(key), *bad],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2  # a value the server cannot run with: bad usage
    assert result.stderr.startswith("Error: " + bad[0])


def test_a_corrupt_segment_is_remade_not_refused(start_server, key) -> None:  # type: ignore[no-untyped-def]
    import sysv_ipc

    junk = sysv_ipc.SharedMemory(key, sysv_ipc.IPC_CREX, mode=0o600, size=8192)
    junk.write(b"not a segment header")
    junk.detach()
    server = start_server()
    assert server.info()["start_mode"] == "init"
    assert "re-creating segment" in server.log() or "re-initialising segment" in server.log()
    assert EchoClient(server.port).request(b"fresh") == b"fresh"


def test_a_client_sending_a_byte_a_second_is_closed_after_the_frame_timeout(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("--frame-timeout", "2", "--idle-timeout", "0")
    slow = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    other = EchoClient(server.port)
    wire = frame(b"x" * 100)
    started = time.monotonic()
    closed_after = None
    for i in range(8):  # the frame would need 104 s at this pace
        try:
            slow.sendall(wire[i : i + 1])
        except OSError:
            closed_after = time.monotonic() - started
            break
        assert other.request(b"still served") == b"still served"
        time.sleep(1.0)
    if closed_after is None:
        slow.settimeout(5)
        assert slow.recv(1) == b""  # the server closed it
        closed_after = time.monotonic() - started
    assert 2 <= closed_after < 6
    assert "(--frame-timeout)" in server.log()
    assert server.info()["counters"]["closed_for_abuse"] == 1
