"""The connect process leaves queued frames in a client's socket for a few
reads and takes them out in one call (``server.proc.sockets``), with the
sockets edge-triggered (``server.proc.poller``).  Seen from outside, on a
real server: the server's receive queue (``/proc/net/tcp``) holds only
whole frames that were answered, and is empty within a tick; a kill -9 of
connect while it holds them repeats none of them; a burst larger than one
read is read to its end with no further event; a stop with bytes left in
a socket closes it (FIN), not resets it.
"""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest
from helpers.chaos import chaos
from helpers.server import EchoClient, ServerProc, frame


def server_unread(port: int, client: socket.socket) -> int:
    """Bytes unread in the server's end of ``client``'s connection."""
    peer = client.getsockname()[1]
    with open("/proc/net/tcp") as table:
        next(table)
        for row in table:
            fields = row.split()
            local, remote = fields[1], fields[2]
            if int(local.split(":")[1], 16) == port and int(remote.split(":")[1], 16) == peer:
                return int(fields[4].split(":")[1], 16)
    raise AssertionError(f"no server socket for the client on port {peer}")


def answer_until_left(server: ServerProc, c: EchoClient, least: int) -> int:
    """Requests, one at a time, until the server's socket holds ``least``
    bytes of them; how many it took."""
    for n in range(1, 51):
        assert c.request(b"r%d" % n) == b"r%d" % n
        if server_unread(server.port, c.sock) >= least:
            return n
    raise AssertionError("the frames were taken out at once, every time")


def test_answered_frames_wait_in_the_socket_whole_then_are_taken_out(start_server) -> None:  # type: ignore[no-untyped-def]
    server: ServerProc = start_server()
    c = EchoClient(server.port)
    sizes = [len(frame(b"%d" % n)) for n in range(30)]
    ends = {sum(sizes[a:b]) for b in range(len(sizes) + 1) for a in range(b + 1)}
    seen = []
    for n in range(30):
        assert c.request(b"%d" % n) == b"%d" % n
        seen.append(server_unread(server.port, c.sock))
    assert max(seen) > 0, seen  # left there, and ...
    assert set(seen) <= ends, seen  # ... whole frames only (a tick may take them out between)
    deadline = time.monotonic() + 3
    while server_unread(server.port, c.sock) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server_unread(server.port, c.sock) == 0  # a quiet client's bytes do not stay
    assert c.request(b"more") == b"more"


def test_a_connect_kill_while_answered_frames_wait_in_the_socket_repeats_none(  # type: ignore[no-untyped-def]
    start_server,
) -> None:
    server: ServerProc = start_server()
    c = EchoClient(server.port)
    n = answer_until_left(server, c, 5 * len(frame(b"r0")))
    victim = server.pid("connect")
    os.kill(victim, signal.SIGKILL)
    server.wait_for(
        lambda i: (
            i["processes"]["connect"]["pid"] not in (None, victim)
            and "took over 1 connection" in server.log().rsplit("started: clients", 1)[-1]
        ),
        what="connect restarted and resumed",
    )
    assert c.request(b"after") == b"after"  # not an answer to a request read again
    assert c.request(b"and on") == b"and on"
    info = server.info()
    assert info["counters"]["connections_lost"] == 0
    assert info["processes"]["logic"]["requests"] == n + 2, (n, info["processes"]["logic"])


def test_a_burst_of_lines_larger_than_a_read_is_read_to_its_end(start_server) -> None:  # type: ignore[no-untyped-def]
    """Line framing with a small queue reads 2 KiB at a time: 25 KiB in one
    write needs 13 reads, and only the first has an event (the lines are 64
    bytes: each read ends at the end of a line, so nothing else wakes it)."""
    server: ServerProc = start_server(
        "--framing", "line", "--max-frame", "1024", "--queue-bytes", "65536"
    )
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    lines = [b"line %04d %s" % (n, b"x" * 53) for n in range(400)]
    assert {len(line) + 1 for line in lines} == {64}
    sock.sendall(b"".join(line + b"\n" for line in lines))
    got = b""
    want = sum(len(line) + 1 for line in lines)
    while len(got) < want:
        part = sock.recv(65536)
        assert part, f"closed after {len(got)} of {want} bytes"
        got += part
    assert got.split(b"\n")[:-1] == lines
    sock.close()


def test_a_stop_closes_a_socket_with_bytes_left_in_it_and_does_not_reset_it(  # type: ignore[no-untyped-def]
    start_server,
) -> None:
    server: ServerProc = start_server()
    c = EchoClient(server.port)
    answer_until_left(server, c, 1)
    assert server.stop() == 0
    assert c.recv() is None  # an orderly end: a reset raises ConnectionResetError


def test_without_peek_offsets_frames_leave_at_once_and_connect_kills_lose_nothing(  # type: ignore[no-untyped-def]
    start_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As on a kernel before Linux 6.10 (no ``SO_PEEK_OFF`` for TCP): each
    peek copies the unread bytes again, so queued frames are taken out at once."""
    monkeypatch.setenv("STCP_NO_PEEK_OFF", "1")
    server: ServerProc = start_server()
    c = EchoClient(server.port)
    for n in range(20):
        assert c.request(b"%d" % n) == b"%d" % n
        assert server_unread(server.port, c.sock) == 0
    c.close()
    report = chaos("connect", 5, "0.3-0.8")  # its servers inherit the variable
    assert report["restarts"] == 5 and report["client_disconnects"] == 0, report
