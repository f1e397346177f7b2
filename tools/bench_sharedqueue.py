"""Benchmark: SharedQueue with many writers and readers, against the queues
Python offers for unrelated processes.

W writer processes and R reader processes share one queue; every transport
is measured in the same run, one after the other, so the ratios mean
something on a noisy machine even when the absolute figures do not.
Transports: ``SharedQueue`` one code per call and batched
(``push_many``/``pop_many``, 64 codes), ``multiprocessing.Queue`` (one per
``put``, and a list of 64 per ``put``), ``sysv_ipc.MessageQueue`` and
``posix_ipc.MessageQueue`` (one per send: a kernel queue has no batch; the
latter only when installed: ``pip install -e '.[bench]'``).

Every code is verified.  A code is (writer id, sequence number) and a body
that depends on the sequence number.  Each reader checks every body and
that each writer's numbers rise strictly in what it reads; at the end the
counts and the sums of the numbers per writer, over all readers, must be
exactly those sent: a lost, repeated or torn code fails the run.

The clock runs from the moment every process is ready to the last data code
read (``time.monotonic`` is one clock for all processes).  Every run is
bounded in time (``--limit``).

Examples:
    python -m tools.bench_sharedqueue                  # the full table, a few minutes
    python -m tools.bench_sharedqueue --writers 4 --readers 1 --sizes 64 --codes 100000
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import random
import struct
import sys
import time
from typing import Any

import sysv_ipc

from server import SharedQueue

try:
    import posix_ipc
except ImportError:  # a benchmark-only extra
    posix_ipc = None

HEAD = struct.Struct("<II")  # writer id, sequence number
STOP_ID = 0xFFFFFFFF
BATCH = 64
BODIES = 7
CAPACITY = 1 << 20

_fork = multiprocessing.get_context("fork")


def bodies_of(size: int) -> list[bytes]:
    rnd = random.Random(size)
    return [rnd.randbytes(max(0, size - HEAD.size)) for _ in range(BODIES)]


def codes_of(writer: int, count: int, size: int) -> list[bytes]:
    bodies = bodies_of(size)
    pack = HEAD.pack
    return [pack(writer, seq) + bodies[seq % BODIES] for seq in range(count)]


# -- transports: made in the parent, opened again in each child after the fork ------


class Transport:
    name = "?"
    batched = False

    def open(self) -> None:
        """In the child, after the fork."""

    def send(self, code: bytes) -> None:
        raise NotImplementedError

    def send_many(self, codes: list[bytes]) -> None:
        for code in codes:
            self.send(code)

    def recv(self) -> bytes:
        raise NotImplementedError

    def recv_many(self) -> list[bytes]:
        return [self.recv()]

    def close(self) -> None:
        """In the child."""

    def remove(self) -> None:
        """In the parent, at the end."""


class Shared(Transport):
    def __init__(self, batched: bool) -> None:
        self.batched = batched
        self.name = "SharedQueue batched" if batched else "SharedQueue 1/call"
        self.key = random.randint(0x1000_0000, 0x7FFF_FFFF)
        SharedQueue.open(self.key, CAPACITY).close()
        self.q: SharedQueue | None = None

    def open(self) -> None:
        self.q = q = SharedQueue.open(self.key, CAPACITY)
        self.send = q.push  # type: ignore[method-assign,assignment]
        self.recv = q.pop  # type: ignore[method-assign,assignment]

    def send_many(self, codes: list[bytes]) -> None:
        assert self.q is not None
        self.q.push_many(codes)

    def recv_many(self) -> list[bytes]:
        assert self.q is not None
        return self.q.pop_many(BATCH * 4)

    def close(self) -> None:
        if self.q is not None:
            self.q.close()

    def remove(self) -> None:
        SharedQueue.remove(self.key)


class MPQueue(Transport):
    def __init__(self, batched: bool) -> None:
        self.batched = batched
        self.name = "mp.Queue lists of 64" if batched else "mp.Queue 1/put"
        self.q: Any = _fork.Queue()

    def send(self, code: bytes) -> None:
        self.q.put(code)

    def send_many(self, codes: list[bytes]) -> None:
        self.q.put(codes)  # a list per put: the batch of a pickling queue

    def recv(self) -> bytes:
        got = self.q.get()
        assert isinstance(got, bytes)
        return got

    def recv_many(self) -> list[bytes]:
        got = self.q.get()
        return got if isinstance(got, list) else [got]

    def close(self) -> None:
        self.q.close()
        self.q.join_thread()


class SysvMQ(Transport):
    name = "sysv_ipc.MessageQueue"

    def __init__(self) -> None:
        self.mq = sysv_ipc.MessageQueue(None, sysv_ipc.IPC_CREX, mode=0o600)
        with contextlib.suppress(Exception):  # as much room as ours, where allowed
            self.mq.max_size = CAPACITY
        self.send = self.mq.send  # type: ignore[method-assign]

    def recv(self) -> bytes:
        got: bytes = self.mq.receive()[0]
        return got

    def remove(self) -> None:
        self.mq.remove()


class PosixMQ(Transport):
    name = "posix_ipc.MessageQueue"

    def __init__(self, size: int) -> None:
        assert posix_ipc is not None
        name = f"/stcp-bench-{os.getpid()}-{random.getrandbits(32):08x}"
        room = max(10, min(CAPACITY // max(size, 1), 65536))
        try:
            self.mq = posix_ipc.MessageQueue(
                name, posix_ipc.O_CREX, 0o600, max_messages=room, max_message_size=max(size, 16)
            )
        except ValueError:  # over this user's limit: the default depth
            self.mq = posix_ipc.MessageQueue(
                name, posix_ipc.O_CREX, 0o600, max_message_size=max(size, 16)
            )
        self.send = self.mq.send  # type: ignore[method-assign]

    def recv(self) -> bytes:
        got: bytes = self.mq.receive()[0]
        return got

    def remove(self) -> None:
        self.mq.close()
        self.mq.unlink()


# -- the processes ---------------------------------------------------------------------


def writer(t: Transport, ident: int, count: int, size: int, ready: Any) -> None:
    codes = codes_of(ident, count, size)
    t.open()
    ready.wait()
    if t.batched:
        for i in range(0, count, BATCH):
            t.send_many(codes[i : i + BATCH])
    else:
        send = t.send
        for code in codes:
            send(code)
    t.close()


def reader(t: Transport, writers: int, size: int, ready: Any, results: Any) -> None:
    bodies = bodies_of(size)
    last = [-1] * writers
    counts = [0] * writers
    sums = [0] * writers
    unpack = HEAD.unpack_from
    t.open()
    ready.wait()
    finished = time.monotonic()
    recv_many = t.recv_many if t.batched else None
    stops = 0
    while not stops:
        got = recv_many() if recv_many is not None else [t.recv()]
        for code in got:
            ident, seq = unpack(code)
            if ident == STOP_ID:
                stops += 1
                continue
            if seq <= last[ident] or code[HEAD.size :] != bodies[seq % BODIES]:
                raise AssertionError(f"writer {ident}'s code {seq} is wrong or out of order")
            last[ident] = seq
            counts[ident] += 1
            sums[ident] += seq
        if not stops:
            finished = time.monotonic()
    for _ in range(stops - 1):  # a batch took another reader's stop too
        t.send(HEAD.pack(STOP_ID, 0))
    t.close()
    results.put((finished, counts, sums))


def _child(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except BaseException as err:  # report, then die with a non-zero code
        print(f"bench child failed: {err!r}", file=sys.stderr)
        os._exit(1)


def run(t: Transport, writers: int, readers: int, size: int, total: int, limit: float) -> float:
    """Codes/s moving ``total`` codes (split among the writers), verified."""
    per = max(1, total // writers)
    ready = _fork.Barrier(writers + readers + 1)
    results: Any = _fork.SimpleQueue()
    procs = [
        _fork.Process(target=_child, args=(writer, t, w, per, size, ready)) for w in range(writers)
    ]
    procs += [
        _fork.Process(target=_child, args=(reader, t, writers, size, ready, results))
        for _ in range(readers)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + limit
    try:
        ready.wait(timeout=limit)
        start = time.monotonic()
        for p in procs[:writers]:
            p.join(max(0.1, deadline - time.monotonic()))
        if any(p.exitcode != 0 for p in procs[:writers]):
            raise RuntimeError(f"{t.name}: a writer failed or took over {limit} s")
        t.open()
        for _ in range(readers):
            t.send(HEAD.pack(STOP_ID, 0))
        for p in procs[writers:]:
            p.join(max(0.1, deadline - time.monotonic()))
        t.close()
        if any(p.exitcode != 0 for p in procs):
            raise RuntimeError(f"{t.name}: a reader failed or took over {limit} s")
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    ends, counts, sums = [], [0] * writers, [0] * writers
    for _ in range(readers):
        finished, c, s = results.get()
        ends.append(finished)
        counts = [a + b for a, b in zip(counts, c, strict=True)]
        sums = [a + b for a, b in zip(sums, s, strict=True)]
    if counts != [per] * writers or sums != [per * (per - 1) // 2] * writers:
        raise AssertionError(f"{t.name}: codes lost or repeated: counts {counts}, expected {per}")
    return per * writers / (max(ends) - start)


def transports(size: int, batched_too: bool) -> list[Transport]:
    out: list[Transport] = [Shared(False)]
    if batched_too:
        out.append(Shared(True))
    out += [MPQueue(False)]
    if batched_too:
        out.append(MPQueue(True))
    out.append(SysvMQ())
    if posix_ipc is not None:
        out.append(PosixMQ(size))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__[__doc__.index("Examples:") :],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--writers", default="1,4,8", help="writer processes (default 1,4,8)")
    parser.add_argument("--readers", default="1,2", help="reader processes (default 1,2)")
    parser.add_argument("--sizes", default="64,1024", help="code sizes in bytes (at least 8)")
    parser.add_argument(
        "--codes", type=int, default=120_000, help="codes per run for 64 B (fewer for larger)"
    )
    parser.add_argument("--limit", type=float, default=60.0, help="seconds a run may take")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if min(sizes) < HEAD.size:
        parser.error(f"a code carries an {HEAD.size}-byte header: sizes of at least 8 bytes")
    if posix_ipc is None:
        print("posix_ipc is not installed (pip install -e '.[bench]'): its column is left out")
    print(f"{os.cpu_count()} cores; every code verified; codes/s, and x sysv_ipc.MessageQueue\n")
    for size in sizes:
        total = max(10_000, args.codes * 64 // max(size, 64))
        for w in (int(x) for x in args.writers.split(",")):
            for r in (int(x) for x in args.readers.split(",")):
                print(f"{w} writers x {r} readers, {size} B, {total:,} codes")
                rates: list[tuple[str, float]] = []
                for t in transports(size, batched_too=True):
                    try:
                        rates.append((t.name, run(t, w, r, size, total, args.limit)))
                    finally:
                        t.remove()
                base = dict(rates)[SysvMQ.name]
                for name, rate in rates:
                    print(f"  {name:<24} {rate:>12,.0f} {rate / base:>7.2f}x", flush=True)
                print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
