"""The kernel's stream counters on real sockets over 127.0.0.1, and the
resume decisions fed with them (``server.ipc.tcpstate``, ``server.core.streams``)."""

from __future__ import annotations

import os
import socket
import time

import pytest

from server.core.streams import inbound_skip, outbound_skip, trim
from server.ipc.tcpstate import counters

pytestmark = pytest.mark.timeout(30)


def pair() -> tuple[socket.socket, socket.socket]:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    return client, server


def settle(predicate) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 5
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.005)


def test_the_counters_follow_what_was_sent_and_read() -> None:
    client, server = pair()
    with client, server:
        assert counters(server) == counters(server).__class__(0, 0, 0, 0)  # accepted: no SYN
        client.sendall(b"x" * 5000)
        settle(lambda: counters(server).received == 5000)
        assert counters(server).unread == 5000 and counters(server).consumed == 0
        assert len(server.recv(1200, socket.MSG_WAITALL)) == 1200
        c = counters(server)
        assert (c.received, c.unread, c.consumed) == (5000, 3800, 1200)
        server.sendall(b"z" * 7000)
        settle(lambda: counters(server).acked == 7000)
        assert counters(server).taken == 7000 and counters(server).unsent == 0


def test_a_duplicate_in_another_process_reads_the_same_counters() -> None:
    """What a supervisor's duplicate sees is what the dead process left."""
    client, server = pair()
    with client, server:
        client.sendall(b"y" * 3000)
        settle(lambda: counters(server).received == 3000)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            server.recv(1000, socket.MSG_WAITALL)  # "connect" consumes, then dies
            os._exit(0)
        os.waitpid(pid, 0)
        os.close(r)
        os.close(w)
        assert counters(server).consumed == 1000


def test_resuming_a_real_stream_after_a_process_died_mid_way() -> None:
    """The frames of 10 bytes each: a process queued 4 frames (ledger:
    pushed 40) but took only 2 out of the socket (20) before dying.  The
    next one drops 20 bytes and reads frame 5 first."""
    client, server = pair()
    with client, server:
        client.sendall(b"".join(b"frame %03d\n" % i for i in range(1, 9)))
        settle(lambda: counters(server).received == 80)
        server.recv(20, socket.MSG_WAITALL)
        c = counters(server)
        r = inbound_skip(pushed=40, received=c.received, unread=c.unread)
        assert r.ok and r.skip == 20
        server.recv(r.skip, socket.MSG_WAITALL)
        assert server.recv(10, socket.MSG_WAITALL) == b"frame 005\n"


def test_resuming_real_output_sends_each_byte_once() -> None:
    """Replies of 6 bytes: the head is before reply 2 (written 6), the dead
    process had handed replies 2 and half of 3 to the kernel (taken 15)."""
    client, server = pair()
    with client, server:
        replies = [b"r%04d\n" % i for i in range(1, 6)]
        server.sendall(replies[0] + replies[1] + replies[2][:3])
        settle(lambda: counters(server).unsent == 0)
        r = outbound_skip(written=6, acked=counters(server).acked, unsent=counters(server).unsent)
        assert r.ok and r.skip == 9
        server.sendall(b"".join(trim(replies[1:], r.skip)))
        got = b""
        while len(got) < 30:
            got += client.recv(100)
        assert got == b"".join(replies)
