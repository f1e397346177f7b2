"""Benchmark: the bus, local and across hosts, against pyzmq PUSH/PULL.

    python -m tools.bench_bus                     # 64 B and 1 KiB, about a minute
    python -m tools.bench_bus --sizes 64 --messages 50000

Side by side in one run: messages/s from a sender process to a receiver,
the bus one ``send``/``recv`` per message and batched (``send_many`` of 64,
``recv_many``), zmq one ``send``/``recv`` per message (it batches inside):

* *local*: two endpoints on one host (shared memory only), against zmq
  PUSH/PULL over ``ipc://``;
* *cross-host*: an endpoint on h1 to one on h2 through both relays, the
  hosts on the loopback addresses 127.0.0.2 and 127.0.0.3, against zmq
  PUSH/PULL over ``tcp://`` between the same two addresses.

Every message is verified: each carries its number, and the receiver
checks they come 0, 1, 2, ... and the size.  zmq gives no delivery
guarantee across a crash; the bus does (``tools.chaos_bus``).  pyzmq is a
benchmark-only extra: ``pip install -e '.[bench]'``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from server.bus import Bus
from tools.busrig import Relays, remove_queues, write_config

try:
    import zmq

    HAVE_ZMQ = True
except ImportError:  # a benchmark-only extra
    HAVE_ZMQ = False

_fork = multiprocessing.get_context("fork")
SEQ = struct.Struct(">Q")


def _message(i: int, size: int) -> bytes:
    return SEQ.pack(i) + b"m" * (size - SEQ.size)


def _check(i: int, got: bytes, size: int) -> None:
    if len(got) != size or SEQ.unpack_from(got)[0] != i:
        raise AssertionError(f"message {i}: got {got[:16]!r}... ({len(got)} B)")


def _free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


# -- the bus ----------------------------------------------------------------------------
BATCH = 64  # messages per send_many in the batched runs


def _bus_sender(config: str, n: int, size: int, batched: bool) -> None:
    with Bus.open("a", config=config) as bus:
        if not batched:
            for i in range(n):
                bus.send("b", _message(i, size))
            return
        for first in range(0, n, BATCH):
            run = [_message(i, size) for i in range(first, min(n, first + BATCH))]
            if bus.send_many("b", run) != len(run):
                raise AssertionError("send_many without a timeout queued less than all")


def bus_rate(config: str, n: int, size: int, batched: bool = False) -> float:
    """Messages/s from a sender process to us: one ``send``/``recv`` per
    message, or (``batched``) ``send_many`` of 64 and ``recv_many``."""
    with Bus.open("b", config=config) as bus:
        sender = _fork.Process(target=_bus_sender, args=(config, n, size, batched))
        start = time.perf_counter()
        sender.start()
        i = 0
        while i < n:
            got = bus.recv_many(256, timeout=30) if batched else [bus.recv(timeout=30)]
            if not got or got[0] is None:
                raise AssertionError(f"message {i} never came")
            for message in got:
                assert message is not None
                _check(i, message[1], size)
                i += 1
        elapsed = time.perf_counter() - start
        sender.join(30)
    return n / elapsed


def _bus_config(folder: Path, cross: bool) -> tuple[str, dict[str, str]]:
    hosts = {
        "h1": f"127.0.0.2:{_free_port('127.0.0.2')}",
        "h2": f"127.0.0.3:{_free_port('127.0.0.3')}",
    }
    routes = {"a": "h1", "b": "h2" if cross else "h1"}
    path = folder / f"bus-{'cross' if cross else 'local'}.toml"
    return write_config(path, hosts, routes, settings=""), hosts  # a real bus's defaults


# -- zmq --------------------------------------------------------------------------------
def _zmq_sender(address: str, n: int, size: int) -> None:
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.connect(address)
    for i in range(n):
        push.send(_message(i, size))
    push.close(linger=-1)  # until everything is sent
    ctx.term()


def zmq_rate(address: str, n: int, size: int) -> float:
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind(address)
    sender = _fork.Process(target=_zmq_sender, args=(address, n, size))
    start = time.perf_counter()
    sender.start()
    for i in range(n):
        _check(i, pull.recv(), size)
    elapsed = time.perf_counter() - start
    sender.join(30)
    pull.close(linger=0)
    ctx.term()
    return n / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__[__doc__.index("Side by side") :],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sizes", default="64,1024", help="message sizes in bytes (at least 8)")
    parser.add_argument("--messages", type=int, default=100_000, help="per run (100,000)")
    a = parser.parse_args(argv)
    sizes = [int(s) for s in a.sizes.split(",")]
    if min(sizes) < SEQ.size:
        parser.error("messages carry an 8-byte number: sizes of at least 8")
    if not HAVE_ZMQ:
        print("pyzmq is not installed (pip install -e '.[bench]'): its column is left out")
    folder = Path(tempfile.mkdtemp(prefix="stcp-bench-bus-"))
    print(f"{os.cpu_count()} cores; {a.messages:,} messages per run, every one verified\n")
    print(
        f"{'path':<12} {'size':>6} {'bus 1/call':>12} {'bus batched':>12} {'zmq msg/s':>12} "
        f"{'1/call/zmq':>11} {'batched/zmq':>12}"
    )
    try:
        for cross in (False, True):
            config, hosts = _bus_config(folder, cross)
            relays = Relays(config)
            if cross:
                relays.start("h1")
                relays.start("h2")
                time.sleep(0.5)  # the links come up
            try:
                for size in sizes:
                    ours = bus_rate(config, a.messages, size)
                    batched = bus_rate(config, a.messages, size, batched=True)
                    theirs: Any = None
                    if HAVE_ZMQ:
                        if cross:
                            address = f"tcp://127.0.0.3:{_free_port('127.0.0.3')}"
                        else:
                            address = f"ipc://{folder}/zmq-{random.getrandbits(32):08x}"
                        theirs = zmq_rate(address, a.messages, size)
                    ratio = f"{ours / theirs:.2f}x" if theirs else "-"
                    ratio_b = f"{batched / theirs:.2f}x" if theirs else "-"
                    zmq_text = f"{theirs:>12,.0f}" if theirs else f"{'-':>12}"
                    path = "cross-host" if cross else "local"
                    print(
                        f"{path:<12} {size:>6} {ours:>12,.0f} {batched:>12,.0f} {zmq_text} "
                        f"{ratio:>11} {ratio_b:>12}",
                        flush=True,
                    )
            finally:
                relays.stop()
                remove_queues(config)
    finally:
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
