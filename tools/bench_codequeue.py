"""Benchmark: CodeQueue against multiprocessing.Pipe and a System V message queue.

Every transport is measured in the same run, producer and consumer in two
processes, so the ratios mean something on a noisy machine even when the
absolute figures do not.  Every message is verified by the consumer: code i
must equal ``blobs[i % 257]`` (257 distinct random payloads, so a lost,
repeated, reordered or torn message is caught).

Throughput: codes/s and MB/s for 64 B, 1 KiB and 16 KiB codes.  CodeQueue is
measured one code per call and batched (``push_many``/``pop_many``).
Round trip: a 64-byte ping answered by a busy echo process, p50 and p99.

Examples:
    python -m tools.bench_codequeue            # the full table, about 15 s on 2 cores
    python -m tools.bench_codequeue --seconds 0.3 --sizes 64
    python -m tools.bench_codequeue --sizes 64 --rounds 5   # medians of 5 alternating runs
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import sysv_ipc

from server import CodeQueue, SHMFactory

CAPACITY = 1 << 20
SEGMENT = 3 << 20
BATCH = 64
BATCH_BYTES = 64 * 1024  # a batch is at most this much, so both sides overlap
PERIOD = 257

_fork = multiprocessing.get_context("fork")


def blobs_of(size: int) -> list[bytes]:
    rnd = random.Random(size)
    return [rnd.randbytes(size) for _ in range(PERIOD)]


# -- transports: each is (setup, producer, consumer, teardown) -------------------


class Transport:
    name = "?"

    def producer(self, blobs: list[bytes], count: int) -> None:
        raise NotImplementedError

    def consumer(self, blobs: list[bytes], count: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class QueueTransport(Transport):
    def __init__(self, batched: bool) -> None:
        self.name = "CodeQueue batched" if batched else "CodeQueue 1/call"
        self.batched = batched
        self.key = random.randint(0x1000_0000, 0x7FFF_FFFF)
        shm = SHMFactory.create_product(self.key, SEGMENT)
        CodeQueue(shm, CAPACITY, "there")
        CodeQueue(shm, CAPACITY, "back")
        shm.detach()

    def _open(self) -> tuple[Any, CodeQueue, CodeQueue]:
        shm = SHMFactory.attach(self.key)
        return shm, CodeQueue(shm, CAPACITY, "there"), CodeQueue(shm, CAPACITY, "back")

    def producer(self, blobs: list[bytes], count: int) -> None:
        shm, q, _ = self._open()
        i = 0
        if self.batched:
            batch = max(1, min(BATCH, BATCH_BYTES // len(blobs[0] or b"x")))
            while i < count:
                n = min(batch, count - i)
                start = i % PERIOD
                chunk = (
                    (blobs[start:] + blobs[:start])[:n]
                    if start + n > PERIOD
                    else blobs[start : start + n]
                )
                i += q.push_many(chunk)
        else:
            push = q.push
            while i < count:
                if push(blobs[i % PERIOD]):
                    i += 1
        shm.detach()

    def consumer(self, blobs: list[bytes], count: int) -> None:
        shm, q, _ = self._open()
        i = 0
        if self.batched:
            while i < count:
                q.wait()
                for c in q.pop_many(max_bytes=BATCH_BYTES):
                    if c != blobs[i % PERIOD]:
                        raise AssertionError(f"code {i} is wrong")
                    i += 1
        else:
            pop = q.pop
            while i < count:
                one = pop()
                if one is None:
                    q.wait()
                    continue
                if one != blobs[i % PERIOD]:
                    raise AssertionError(f"code {i} is wrong")
                i += 1
        shm.detach()

    def pinger(self, count: int) -> list[float]:
        shm, there, back = self._open()
        rtts = []
        ping = b"p" * 64
        for _ in range(count):
            t0 = time.perf_counter()
            there.push(ping)
            reply = back.pop()
            while reply is None:
                back.wait()
                reply = back.pop()
            rtts.append(time.perf_counter() - t0)
            assert reply == ping
        there.push(b"")  # stop
        shm.detach()
        return rtts

    def echo(self) -> None:
        shm, there, back = self._open()
        while True:
            c = there.pop()
            if c is None:
                there.wait()
                continue
            if not c:
                break
            back.push(c)
        shm.detach()

    def close(self) -> None:
        SHMFactory.remove(self.key)


class PipeTransport(Transport):
    name = "multiprocessing.Pipe"

    def __init__(self) -> None:
        self.recv_end, self.send_end = _fork.Pipe(duplex=False)
        self.back_recv, self.back_send = _fork.Pipe(duplex=False)

    def producer(self, blobs: list[bytes], count: int) -> None:
        send = self.send_end.send_bytes
        for i in range(count):
            send(blobs[i % PERIOD])

    def consumer(self, blobs: list[bytes], count: int) -> None:
        recv = self.recv_end.recv_bytes
        for i in range(count):
            if recv() != blobs[i % PERIOD]:
                raise AssertionError(f"message {i} is wrong")

    def pinger(self, count: int) -> list[float]:
        rtts = []
        ping = b"p" * 64
        for _ in range(count):
            t0 = time.perf_counter()
            self.send_end.send_bytes(ping)
            c = self.back_recv.recv_bytes()
            rtts.append(time.perf_counter() - t0)
            assert c == ping
        self.send_end.send_bytes(b"")
        return rtts

    def echo(self) -> None:
        while c := self.recv_end.recv_bytes():
            self.back_send.send_bytes(c)


class SysvTransport(Transport):
    name = "sysv_ipc.MessageQueue"

    def __init__(self) -> None:
        self.mq = sysv_ipc.MessageQueue(None, sysv_ipc.IPC_CREX, mode=0o600)
        self.back = sysv_ipc.MessageQueue(None, sysv_ipc.IPC_CREX, mode=0o600)

    def producer(self, blobs: list[bytes], count: int) -> None:
        send = self.mq.send
        for i in range(count):
            send(blobs[i % PERIOD])

    def consumer(self, blobs: list[bytes], count: int) -> None:
        receive = self.mq.receive
        for i in range(count):
            if receive()[0] != blobs[i % PERIOD]:
                raise AssertionError(f"message {i} is wrong")

    def pinger(self, count: int) -> list[float]:
        rtts = []
        ping = b"p" * 64
        for _ in range(count):
            t0 = time.perf_counter()
            self.mq.send(ping)
            c = self.back.receive()[0]
            rtts.append(time.perf_counter() - t0)
            assert c == ping
        self.mq.send(b"!")
        return rtts

    def echo(self) -> None:
        while (c := self.mq.receive()[0]) != b"!":
            self.back.send(c)

    def close(self) -> None:
        self.mq.remove()
        self.back.remove()


def sysv_message_limit() -> int:
    try:
        with open("/proc/sys/kernel/msgmax") as f:
            return int(f.read())
    except OSError:
        return 8192


# -- measuring ---------------------------------------------------------------------


def _run_child(fn: Callable[..., None], args: tuple[Any, ...]) -> None:
    try:
        fn(*args)
    except BaseException as err:  # report, then die with a non-zero code
        print(f"bench child failed: {err!r}", file=sys.stderr)
        os._exit(1)


def throughput(t: Transport, size: int, count: int) -> float:
    """Seconds to move ``count`` codes of ``size`` bytes, verified."""
    blobs = blobs_of(size)
    consumer = _fork.Process(target=_run_child, args=(t.consumer, (blobs, count)))
    consumer.start()
    t0 = time.perf_counter()
    producer = _fork.Process(target=_run_child, args=(t.producer, (blobs, count)))
    producer.start()
    producer.join(120)
    consumer.join(120)
    elapsed = time.perf_counter() - t0
    for p in (producer, consumer):
        if p.is_alive():
            p.kill()
            raise RuntimeError(f"{t.name}: {size}-byte run did not finish in 120 s")
        if p.exitcode != 0:
            raise RuntimeError(f"{t.name}: a {size}-byte run failed (exit {p.exitcode})")
    return elapsed


def round_trips(t: Any, count: int) -> list[float]:
    echo = _fork.Process(target=_run_child, args=(t.echo, ()))
    echo.start()
    try:
        rtts: list[float] = t.pinger(count)
    finally:
        echo.join(10)
        if echo.is_alive():
            echo.kill()
    return rtts


def calibrate(t: Transport, size: int, seconds: float) -> int:
    """How many codes make a run of about ``seconds``: trials grow until one
    lasts a tenth of that, so starting the processes does not dominate."""
    trial = 2000
    while True:
        elapsed = throughput(t, size, trial)
        if elapsed >= seconds / 10 or trial >= 1 << 26:
            return max(trial, int(trial * seconds / max(elapsed, 1e-3)))
        trial *= 4


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__[__doc__.index("Examples:") :],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seconds", type=float, default=1.0, help="length of each run (default 1)")
    parser.add_argument("--sizes", default="64,1024,16384", help="code sizes in bytes")
    parser.add_argument("--pings", type=int, default=5000, help="round trips per transport")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="time each transport this many times, taking turns; print the medians and "
        "each round's ratio to that round's Pipe (default 1)",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, not {args.rounds}")
    sizes = [int(s) for s in args.sizes.split(",")]

    transports: list[Transport] = [
        PipeTransport(),
        SysvTransport(),
        QueueTransport(batched=False),
        QueueTransport(batched=True),
    ]
    msgmax = sysv_message_limit()
    try:
        print(f"{os.cpu_count()} cores; each run about {args.seconds} s; every code verified\n")
        by_round = "  x Pipe by round" if args.rounds > 1 else ""
        print(f"{'transport':<22} {'size':>6} {'codes/s':>12} {'MB/s':>10} {'x Pipe':>8}{by_round}")
        runs: list[float] = []
        for size in sizes:
            fit = [t for t in transports if not (isinstance(t, SysvTransport) and size > msgmax)]
            counts = [calibrate(t, size, args.seconds) for t in fit]
            rates: list[list[float]] = [[] for _ in fit]
            for _ in range(args.rounds):  # taking turns: a noisy minute hits them all
                for i, t in enumerate(fit):
                    elapsed = throughput(t, size, counts[i])
                    runs.append(elapsed)
                    rates[i].append(counts[i] / elapsed)
            pipe = rates[0]  # the first transport is the Pipe
            for t in transports:
                if t not in fit:
                    print(
                        f"{t.name:<22} {size:>6} {'n/a: larger than kernel.msgmax ' + str(msgmax):>32}"
                    )
                    continue
                mine = rates[fit.index(t)]
                rate = statistics.median(mine)
                ratios = " ".join(f"{r / p:.2f}" for r, p in zip(mine, pipe, strict=True))
                print(
                    f"{t.name:<22} {size:>6} {rate:>12,.0f} {rate * size / 1e6:>10,.1f} "
                    f"{rate / statistics.median(pipe):>7.2f}x"
                    + (f"  {ratios}" if by_round else ""),
                    flush=True,
                )
            print()
        print(f"each timed run took {min(runs):.2f} to {max(runs):.2f} s\n")
        print(f"round trip, 64 B there and back, {args.pings} times, echo process busy")
        print(f"{'transport':<22} {'p50 us':>8} {'p99 us':>8} {'x Pipe p50':>11}")
        pipe_p50 = None
        for t in transports:
            if isinstance(t, QueueTransport) and t.batched:
                continue
            rtts = sorted(round_trips(t, args.pings))
            p50 = statistics.median(rtts)
            p99 = rtts[int(len(rtts) * 0.99) - 1]
            if pipe_p50 is None:
                pipe_p50 = p50
            print(
                f"{t.name:<22} {p50 * 1e6:>8.1f} {p99 * 1e6:>8.1f} {p50 / pipe_p50:>10.2f}x",
                flush=True,
            )
    except KeyboardInterrupt:
        return 130
    finally:
        for t in transports:
            t.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
