"""Frames left unread in a client's socket (queued, or incomplete) must never
close the kernel's receive window for good: the client could then send no
more, and nothing would wake the connect process (its client sockets are
edge-triggered, ``server.proc.poller``).  Seen from outside, in a network
namespace whose TCP receive buffers are small (``net.ipv4.tcp_rmem`` is
per namespace): pipelined requests, small ones and ones larger than half
the buffer, are all answered, in order, without a stall."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator

import pytest
from helpers.server import HELPERS, ServerProc

from tools.hosts import MODE

SMALL_RMEM = "4096 8192 16384"  # min, default, max bytes of a socket's receive buffer


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def small_buffers() -> Iterator[list[str]]:
    """The command prefix that runs a program in a fresh namespace with
    small receive buffers."""
    if MODE != "netns":
        pytest.skip("needs root and `ip netns` (a namespace with its own tcp_rmem)")
    name = f"stcp-win-{os.getpid() % 10000}-{random.randint(0, 9999)}"
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("netns", "exec", name, "sysctl", "-q", "-w", f"net.ipv4.tcp_rmem={SMALL_RMEM}")
        yield ["ip", "netns", "exec", name]
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("count", "size", "inflight"),
    [(2000, 1000, 16), (100, 12_000, 3)],
    ids=["small-frames", "frames-past-half-the-buffer"],
)
def test_unread_frames_never_stall_a_client(  # type: ignore[no-untyped-def]
    start_server, small_buffers: list[str], count: int, size: int, inflight: int
) -> None:
    """Each connection is a trial: when a stall comes depends on how the
    kernel cut the stream into packets."""
    server: ServerProc = start_server(prefix=small_buffers)
    client = [sys.executable, str(HELPERS / "window_client.py"), str(server.port)]
    args = [str(count), str(size), str(inflight), "--conns", "8", "--patience", "3"]
    done = subprocess.run(
        [*small_buffers, *client, *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    answered = [c["answered"] for c in report["connections"]]
    assert answered == [count] * 8, (report, server.log()[-2000:])
    assert report["seconds"] < 10, report  # a stall is a second at least
