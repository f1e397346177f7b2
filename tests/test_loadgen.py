"""The C load generator of ``tools.bench_server --load c`` (``tools.loadgen``):
built for real, run against a real echo server on 127.0.0.1, and stopped
by a reply that is not the request it answers."""

from __future__ import annotations

import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from server.core.framing import LengthFraming
from tools import loadgen

pytestmark = pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler"
)


@contextmanager
def echo_server(mangle: Callable[[int, bytes], list[bytes]]) -> Iterator[int]:
    """A blocking echo server, a thread per connection; ``mangle(n, payload)``
    gives the replies to send after the connection's ``n``-th request."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        framing = LengthFraming(1 << 20)
        n = 0
        with conn:
            while not stop.is_set():
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                for payload in framing.feed(data):
                    for reply in mangle(n, payload):
                        conn.sendall(framing.encode(reply))
                    n += 1

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.close()


@pytest.fixture(scope="module")
def binary() -> Iterator[str]:
    with loadgen.built() as path:
        yield path


def test_it_counts_and_times_the_replies_of_an_echo_server(binary: str) -> None:
    with echo_server(lambda n, p: [p]) as port:
        r = loadgen.run(binary, port, conns=3, inflight=4, size=64, warmup=0.1, seconds=0.5)
    assert r["rps"] > 100
    assert 0 < r["p50"] <= r["p99"]
    assert r["client_cores"] >= 0


def test_a_reply_that_is_not_its_request_stops_the_run(binary: str) -> None:
    def wrong_once(n: int, payload: bytes) -> list[bytes]:
        return [payload[:-1] + b"y" if n == 50 else payload]  # one byte of one reply

    with echo_server(wrong_once) as port, pytest.raises(RuntimeError, match="expected the reply"):
        loadgen.run(binary, port, conns=1, inflight=2, size=64, warmup=0.1, seconds=2)


def test_a_reply_out_of_order_stops_the_run(binary: str) -> None:
    held: list[bytes] = []

    def swap(n: int, payload: bytes) -> list[bytes]:  # replies 10 and 11 change places
        if n == 10:
            held.append(payload)
            return []
        return [payload, *held] if n == 11 else [payload]

    with echo_server(swap) as port, pytest.raises(RuntimeError, match="request 10"):
        loadgen.run(binary, port, conns=1, inflight=2, size=64, warmup=0.1, seconds=2)


def test_its_report_line_is_parsed_or_refused() -> None:
    assert loadgen.parse("count=10 p50_us=5.0 p99_us=9.5 cpu_s=0.1") == {
        "count": 10.0,
        "p50_us": 5.0,
        "p99_us": 9.5,
        "cpu_s": 0.1,
    }
    with pytest.raises(ValueError, match="printed"):
        loadgen.parse("count=ten")
