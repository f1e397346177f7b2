"""The supervisor's duplicates of client sockets (``server.proc.keeper``).

Real sockets and processes: the count follows the clients, a closed
client is not kept half-open, and when the connect process dies the next
one gets the clients whose streams are whole; the others are closed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from helpers.server import EchoClient, frame

from server.proc.keeper import CLOSE, OPEN, FdKeeper, Notices

pytestmark = pytest.mark.timeout(60)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_notices_reach_the_keeper_in_order_and_nothing_leaks() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    before = open_fds()
    keeper, notices = FdKeeper(), Notices(theirs)
    clients = [socket.socketpair() for _ in range(3)]
    for i, (a, _b) in enumerate(clients):
        notices.opened(100 + i, a)
    notices.closed(101)
    assert keeper.read(ours) and sorted(keeper.held) == [100, 102]
    # malformed notices: ignored, and a descriptor sent with one is closed
    socket.send_fds(theirs, [CLOSE + b"\0" * 8], [clients[0][0].fileno()])
    theirs.send(b"?")
    theirs.send(OPEN + b"\0" * 8)  # an OPEN without its socket
    assert keeper.read(ours) and sorted(keeper.held) == [100, 102]
    assert keeper.close_all() == 2 and keeper.held == {}
    for a, b in clients:
        a.close()
        b.close()
    theirs.close()
    assert not keeper.read(ours)  # the other end is gone
    ours.close()
    assert open_fds() == before - 2


def test_a_full_control_socket_queues_notices_instead_of_blocking() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    notices = Notices(theirs)
    a, b = socket.socketpair()
    for i in range(5000):  # far more than the socket buffer holds
        notices.closed(i)
    assert notices.queue  # some wait, nobody blocked
    keeper = FdKeeper()
    while notices.queue:
        keeper.read(ours)
        notices.flush()
    notices.opened(7, a)
    keeper.read(ours)
    assert list(keeper.held) == [7]
    keeper.close_all()
    # a supervisor that reads nothing: at most MAX_WAITING_SOCKETS descriptors wait
    before = open_fds()
    for i in range(Notices.MAX_WAITING_SOCKETS + 500):
        notices.opened(1000 + i, a)
    assert open_fds() - before <= Notices.MAX_WAITING_SOCKETS
    notices.control = None
    notices.flush()  # nobody to tell: every waiting descriptor closed
    assert open_fds() == before and notices.waiting_sockets == 0
    for s in (ours, theirs, a, b):
        s.close()


def held(server) -> int:  # type: ignore[no-untyped-def]
    return int(server.info()["counters"]["descriptors_held"])


def test_the_supervisor_holds_every_client_and_hands_them_to_the_next_connect(start_server) -> None:  # type: ignore[no-untyped-def]
    """kill -9 of connect: every client keeps its connection, also one that
    had sent half a frame (its bytes waited unread in the socket)."""
    server = start_server()
    clients = [EchoClient(server.port) for _ in range(4)]
    for c in clients:
        assert c.request(b"hi") == b"hi"

    def counted(i: dict) -> list[tuple[int, int, int]]:  # type: ignore[type-arg]
        return [(s["bytes_in"], s["bytes_out"], s["pending_out"]) for s in i["streams"].values()]

    # connect counts a reply's bytes just after writing them: a client may read first
    info = server.wait_for(
        lambda i: i["counters"]["descriptors_held"] == 4 and counted(i) == [(6, 6, 0)] * 4,
        what="4 held, each 6 bytes in and out",
    )
    streams = sorted(info["streams"].values(), key=lambda s: s["peer"])
    assert all(s["peer"].startswith("127.0.0.1:") and s["kept"] for s in streams)
    shown = subprocess.run(
        [sys.executable, "-m", "server", "inspect", "--key", hex(server.key)],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert "peer" in shown and "pending out" in shown and "descriptors_held 4" in shown
    row = next(line for line in shown.splitlines() if streams[0]["peer"] in line)
    assert row.split()[2:] == ["0", "s", "6", "6", "0"] or row.split()[2:] == [
        "1",
        "s",
        "6",
        "6",
        "0",
    ]
    clients.pop().close()
    server.wait_for(lambda i: i["counters"]["descriptors_held"] == 3, what="3 held")
    halfway = clients[-1]
    halfway.sock.sendall(frame(b"whole") + b"\0\0\0\x10half")  # one write, one read
    assert halfway.recv() == b"whole"  # queued and answered; "half" waits in the socket
    os.kill(server.pid("connect"), signal.SIGKILL)
    for i, c in enumerate(clients[:-1]):
        assert c.request(b"after %d" % i) == b"after %d" % i  # the same TCP connection
    halfway.sock.sendall(b"-the-rest-12")
    assert halfway.recv() == b"half-the-rest-12"
    info = server.wait_for(lambda i: i["counters"]["descriptors_held"] == 3, what="3 held")
    assert info["counters"]["connections_lost"] == 0
    assert "took over 3 connection(s) from the connect process that died" in server.log()
    assert server.stop() == 0


def test_a_reload_keeps_the_duplicates(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server()
    clients = [EchoClient(server.port) for _ in range(2)]
    for c in clients:
        assert c.request(b"hi") == b"hi"
    old = server.pid("connect")
    assert server.proc is not None
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for(
        lambda i: (
            i["processes"]["connect"]["pid"] not in (None, old)
            and "handed over and exited" in server.log()
        ),
        what="connect reloaded",
    )
    time.sleep(0.5)
    assert held(server) == 2
    for c in clients:
        assert c.request(b"still") == b"still"
    clients[0].close()
    server.wait_for(lambda i: i["counters"]["descriptors_held"] == 1, what="1 held")
    assert server.stop() == 0


def test_a_stopped_supervisor_never_blocks_connect(start_server) -> None:  # type: ignore[no-untyped-def]
    """Notices are queued, not waited for: with the supervisor frozen, far
    more clients than its socket buffer holds notices for are served."""
    server = start_server("--max-conns", "2000")
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        clients = [EchoClient(server.port) for _ in range(600)]
        for i, c in enumerate(clients):
            assert c.request(b"%d" % i) == b"%d" % i
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    server.wait_for(lambda i: i["counters"]["descriptors_held"] == 600, what="600 held")
    for c in clients:
        c.close()
    server.wait_for(lambda i: i["counters"]["descriptors_held"] == 0, what="none held")
    assert server.stop() == 0
