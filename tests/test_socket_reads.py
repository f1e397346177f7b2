"""How the connect process reads its sockets (``server.proc.sockets``),
seen from outside on a real server: it takes a frame out of the socket as
soon as it is queued, so the server's receive queue (``/proc/net/tcp``)
is empty once a request is answered; a burst larger than one read is read
to its end; a stop closes the socket (FIN), not resets it; and the path of
a kernel without ``SO_PEEK_OFF`` for TCP (before Linux 6.10) loses and
repeats nothing across connect kills.
"""

from __future__ import annotations

import socket

import pytest
from helpers.chaos import chaos
from helpers.server import EchoClient, ServerProc


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


def test_an_answered_request_leaves_nothing_in_the_servers_socket(start_server) -> None:  # type: ignore[no-untyped-def]
    server: ServerProc = start_server()
    c = EchoClient(server.port)
    for n in range(30):
        assert c.request(b"%d" % n) == b"%d" % n
        assert server_unread(server.port, c.sock) == 0


def test_a_burst_of_lines_larger_than_a_read_is_read_to_its_end(start_server) -> None:  # type: ignore[no-untyped-def]
    """Line framing with a small queue reads 2 KiB at a time: 25 KiB in one
    write needs 13 reads, each ending at the end of a 64-byte line."""
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


def test_a_stop_closes_a_clients_socket_and_does_not_reset_it(start_server) -> None:  # type: ignore[no-untyped-def]
    server: ServerProc = start_server()
    c = EchoClient(server.port)
    for n in range(20):
        assert c.request(b"%d" % n) == b"%d" % n
    assert server.stop() == 0
    assert c.recv() is None  # an orderly end: a reset raises ConnectionResetError


def test_without_peek_offsets_frames_leave_at_once_and_connect_kills_lose_nothing(  # type: ignore[no-untyped-def]
    start_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As on a kernel before Linux 6.10 (no ``SO_PEEK_OFF`` for TCP): each
    peek reads the unread bytes again from their start."""
    monkeypatch.setenv("STCP_NO_PEEK_OFF", "1")
    server: ServerProc = start_server()
    c = EchoClient(server.port)
    for n in range(20):
        assert c.request(b"%d" % n) == b"%d" % n
        assert server_unread(server.port, c.sock) == 0
    c.close()
    report = chaos("connect", 5, "0.3-0.8")  # its servers inherit the variable
    assert report["restarts"] == 5 and report["client_disconnects"] == 0, report
