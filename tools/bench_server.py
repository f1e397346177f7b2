"""Benchmark: the echo app on this server against simpler servers, side by side.

    python -m tools.bench_server [--seconds 3] [--clients 2] [--only SCENARIO]
                                 [--servers A,B] [--rounds N] [--load python|c] [--trace]

Servers, all speaking the same protocol (4-byte big-endian length + payload,
every frame answered by the same payload):

* ``stepwise``  ``python -m server run --app echo``: supervisor, connect and
  logic processes over CodeQueues in shared memory;
* ``selectors`` one process, one ``selectors`` loop (the price of process
  isolation is measured against this one);
* ``asyncio``   one process, an ``asyncio.Protocol``;
* ``pipe``      the naive two-process design: a socket process forwards each
  frame to an echo process over a ``multiprocessing.Pipe`` and back.

Scenarios (connections x requests in flight per connection x payload):
1x1x64, 50x1x64, 50x16x64, 10x4x16KiB.  The load comes from ``--clients``
processes, each a non-blocking loop that keeps every connection's window
full and times every request.  Beside each figure the table shows the load
clients' CPU use in cores: on this 2-core machine, a client near 1.0 core
competes with the server it measures, so compare ratios between servers,
never absolute figures.  ``--load c`` drives the servers with one C process
instead (``tools/loadgen.c``: epoll, every reply checked), which leaves
them most of the machine.  This VM's speed changes by 2x from one minute to
the next: ``--rounds N`` lets the servers take turns N times and prints the
medians and every round's ratio.  Every run is bounded in time; only 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import multiprocessing
import os
import random
import resource
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from multiprocessing.connection import Connection
from typing import Any

from server import SHMFactory
from server.core.framing import LengthFraming
from server.proc.common import SPIN_ENV
from server.proc.memory import keep_freed_memory
from tools import loadgen

_fork = multiprocessing.get_context("fork")
SCENARIOS = {
    "1x1x64": (1, 1, 64),
    "50x1x64": (50, 1, 64),
    "50x16x64": (50, 16, 64),
    "10x4x16KiB": (10, 4, 16384),
}
WARMUP = 0.5


# -- the comparison servers (each runs in its own process) ------------------------


def _listen() -> socket.socket:
    sock = socket.create_server(("127.0.0.1", 0), backlog=1024)
    sock.setblocking(False)
    return sock


def selectors_server(sock: socket.socket) -> None:
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ, None)
    out: dict[socket.socket, bytearray] = {}
    framers: dict[socket.socket, LengthFraming] = {}
    # recv(256 KiB) would allocate 256 KiB per call, and glibc gives that back
    # to the kernel and asks for it again when it sits at the top of the heap:
    # how fast this server is then depends on the heap it was forked with (2x).
    # Reading into one buffer, as the connect process does, makes it steady.
    scratch = bytearray(262144)
    view = memoryview(scratch)
    while True:
        for key, mask in sel.select():
            s = key.fileobj
            assert isinstance(s, socket.socket)
            if key.data is None:
                c, _ = s.accept()
                c.setblocking(False)
                c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                framers[c] = LengthFraming(1 << 20)
                out[c] = bytearray()
                sel.register(c, selectors.EVENT_READ, "c")
                continue
            if mask & selectors.EVENT_READ:
                try:
                    data = bytes(view[: s.recv_into(scratch)])
                except ConnectionError:
                    data = b""
                if not data:
                    sel.unregister(s)
                    s.close()
                    del out[s], framers[s]
                    continue
                enc = framers[s].encode
                out[s] += b"".join(enc(f) for f in framers[s].feed(data))
            buf = out[s]
            if buf:
                try:
                    n = s.send(buf)
                except BlockingIOError:
                    n = 0
                except ConnectionError:  # the load client is gone: the measurement ended
                    sel.unregister(s)
                    s.close()
                    del out[s], framers[s]
                    continue
                del buf[:n]
            want = selectors.EVENT_READ | (selectors.EVENT_WRITE if buf else 0)
            if key.events != want:
                sel.modify(s, want, "c")


class _EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.framer = LengthFraming(1 << 20)
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        enc = self.framer.encode
        self.transport.write(b"".join(enc(f) for f in self.framer.feed(data)))


def asyncio_server(sock: socket.socket) -> None:
    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_EchoProtocol, sock=sock)
        await server.serve_forever()

    asyncio.run(main())


def _pipe_logic(rx: Connection, tx: Connection, unused: list[Connection]) -> None:
    for end in unused:  # so that the socket process's death is an EOF here
        end.close()
    try:
        while True:
            tx.send(rx.recv())  # (connection, payload): the app is echo
    except (EOFError, OSError):  # the socket process is gone
        pass


def pipe_server(sock: socket.socket) -> None:
    to_logic_rx, to_logic_tx = _fork.Pipe(duplex=False)
    from_logic_rx, from_logic_tx = _fork.Pipe(duplex=False)
    unused = [to_logic_tx, from_logic_rx]
    _fork.Process(target=_pipe_logic, args=(to_logic_rx, from_logic_tx, unused)).start()
    to_logic_rx.close()
    from_logic_tx.close()
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ, None)
    sel.register(from_logic_rx, selectors.EVENT_READ, "pipe")
    clients: dict[int, tuple[socket.socket, LengthFraming]] = {}
    while True:
        for key, _ in sel.select():
            if key.data is None:
                c, _ = sock.accept()
                c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                clients[c.fileno()] = (c, LengthFraming(1 << 20))
                sel.register(c, selectors.EVENT_READ, "c")
            elif key.data == "pipe":
                while from_logic_rx.poll():
                    fd, payload = from_logic_rx.recv()
                    if fd in clients:
                        c, framer = clients[fd]
                        c.sendall(framer.encode(payload))  # blocking: a naive design
            else:
                fileobj = key.fileobj
                assert isinstance(fileobj, socket.socket)
                c = fileobj
                data = c.recv(262144)
                if not data:
                    sel.unregister(c)
                    del clients[c.fileno()]
                    c.close()
                    continue
                for f in clients[c.fileno()][1].feed(data):
                    to_logic_tx.send((c.fileno(), f))


def _tuned(target: Callable[[socket.socket], None], sock: socket.socket) -> None:
    keep_freed_memory()  # the malloc settings the stepwise workers run with (proc.memory)
    target(sock)


@contextmanager
def in_process(target: Callable[[socket.socket], None]) -> Iterator[tuple[int, list[int]]]:
    sock = _listen()
    proc = _fork.Process(target=_tuned, args=(target, sock))  # not daemonic: pipe forks
    proc.start()
    port = sock.getsockname()[1]
    sock.close()
    try:
        assert proc.pid is not None
        yield port, [proc.pid]
    finally:
        proc.kill()
        proc.join(5)


@contextmanager
def stepwise_server(
    spin: bool = True, env: dict[str, str] | None = None
) -> Iterator[tuple[int, list[int]]]:
    key = random.randint(0x1000_0000, 0x7FFF_FFFF)
    with tempfile.TemporaryFile() as log:
        yield from _stepwise(key, log, spin, env)


def _stepwise(
    key: int, log: Any, spin: bool = True, env: dict[str, str] | None = None
) -> Iterator[tuple[int, list[int]]]:
    extra = {**(env or {}), **({} if spin else {SPIN_ENV: "0"})}
    proc = subprocess.Popen(
        # the server as a user starts it: default options (a larger queue
        # only spreads the same bytes over more cache: 8 MiB was 8% slower)
        [sys.executable, "-m", "server", "run", "--app", "echo", "--port", "0"]
        + ["--key", hex(key)],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=dict(os.environ, **extra),
    )
    tree: list[int] = []
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "listening on" not in line:
            log.seek(0)
            raise RuntimeError(f"the server did not start:\n{log.read().decode(errors='replace')}")
        time.sleep(0.5)  # let the workers attach
        tree = _tree([proc.pid])
        yield int(line.rsplit(":", 1)[1]), [proc.pid]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            log.seek(0)
            tail = log.read().decode(errors="replace").splitlines()[-5:]
            print("the server did not stop in 20 s; killing it. Its log ends:", *tail, sep="\n  ")
            proc.kill()
            proc.wait()
            for pid in tree[1:]:  # workers outlive a killed supervisor (to be adopted): not here
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        _wait_gone(tree[1:], 5.0)  # a worker still attached would keep the segment
        SHMFactory.remove(key)


def _wait_gone(pids: list[int], seconds: float) -> None:
    """Wait until these processes (not our children) have exited; SIGKILL
    those left after ``seconds``."""
    deadline = time.monotonic() + seconds
    left = list(pids)
    while left:
        for pid in list(left):
            try:
                os.kill(pid, signal.SIGKILL if time.monotonic() > deadline else 0)
            except ProcessLookupError:
                left.remove(pid)
        if left:
            time.sleep(0.02)


# -- the load client ----------------------------------------------------------------------


def _client(
    port: int,
    conns: int,
    inflight: int,
    size: int,
    start: Any,
    seconds: float,
    results: Connection,
) -> None:
    """Keep ``inflight`` requests on each of ``conns`` connections; after the
    warm-up, count replies and their latencies for ``seconds``.

    Requests sent together share a send time, and replies read together a
    reply time, so each connection keeps its requests as runs ``[sent, n]``
    and the latencies come as ``(seconds, requests)`` pairs: per read the
    client does work per run, not per request, and leaves the server the
    CPU it would spend (the figures are the same as request by request)."""
    request = len(b"x" * size).to_bytes(4, "big") + b"x" * size
    frame_len = len(request)
    sel = selectors.DefaultSelector()
    runs: dict[socket.socket, collections.deque[list[float]]] = {}
    buffers: dict[socket.socket, int] = {}
    scratch = bytearray(1 << 20)
    for _ in range(conns):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        runs[s] = collections.deque()
        buffers[s] = 0
    start.wait()
    now = time.perf_counter()
    for s, q in runs.items():
        s.setblocking(True)
        s.sendall(request * inflight)
        s.setblocking(False)
        q.append([now, inflight])
    measure_from = now + WARMUP
    end = measure_from + seconds
    count = 0
    latencies: list[tuple[float, int]] = []
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        for key, _ in sel.select(end - now):
            fileobj = key.fileobj
            assert isinstance(fileobj, socket.socket)
            s = fileobj
            try:
                n = s.recv_into(scratch)  # only the count matters (see selectors_server)
            except BlockingIOError:
                continue
            if not n:
                raise RuntimeError("the server closed a connection")
            got = buffers[s] + n
            done, buffers[s] = divmod(got, frame_len)
            if not done:
                continue
            now = time.perf_counter()
            q = runs[s]
            left = done
            while left:  # the oldest runs of requests are the ones answered
                run = q[0]
                take = min(left, int(run[1]))
                if now >= measure_from:
                    latencies.append((now - run[0], take))
                if take == run[1]:
                    q.popleft()
                else:
                    run[1] -= take
                left -= take
            if now >= measure_from:
                count += done
            q.append([now, done])
            s.setblocking(True)
            s.sendall(request * done)
            s.setblocking(False)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    results.send((count, latencies, cpu))
    for s in runs:
        s.close()


def percentile(latencies: list[tuple[float, int]], q: float) -> float:
    """The ``q`` quantile, in microseconds, of latencies given as sorted
    ``(seconds, requests)`` pairs (nan for none)."""
    total = sum(n for _, n in latencies)
    if not total:
        return float("nan")
    rank = min(total - 1, int(q * total))  # the request at this rank, counted from 0
    seen = 0
    for seconds, n in latencies:
        seen += n
        if seen > rank:
            return seconds * 1e6
    return latencies[-1][0] * 1e6


def run_load(
    port: int, conns: int, inflight: int, size: int, seconds: float, clients: int, label: str
) -> dict[str, float]:
    clients = max(1, min(clients, conns))
    share = [conns // clients + (1 if i < conns % clients else 0) for i in range(clients)]
    start = _fork.Event()
    pipes = []
    procs = []
    for n in share:
        rx, tx = _fork.Pipe(duplex=False)
        p = _fork.Process(
            target=_client, args=(port, n, inflight, size, start, seconds, tx), daemon=True
        )
        p.start()
        pipes.append(rx)
        procs.append(p)
    time.sleep(0.3)  # connections made
    start.set()
    began = time.monotonic()
    total = WARMUP + seconds
    while (elapsed := time.monotonic() - began) < total:
        _progress(label, elapsed / total)
        time.sleep(min(0.25, max(0.0, total - elapsed)))
    _progress(label, 1.0)
    count = 0
    latencies: list[tuple[float, int]] = []
    cpu = 0.0
    for rx, p in zip(pipes, procs, strict=True):
        if not rx.poll(30):
            raise RuntimeError(f"load client {p.pid} gave no result")
        c, lat, t = rx.recv()
        count += c
        latencies += lat
        cpu += t
        p.join(5)
    latencies.sort()
    return {
        "rps": count / seconds,
        "p50": percentile(latencies, 0.50),
        "p99": percentile(latencies, 0.99),
        "client_cores": cpu / seconds,
    }


def _progress(label: str, fraction: float) -> None:
    if not sys.stderr.isatty():
        return
    width = 30
    filled = int(width * fraction)
    sys.stderr.write(f"\r  {label:<24} [{'#' * filled}{'.' * (width - filled)}] {fraction:4.0%}")
    if fraction >= 1.0:
        sys.stderr.write("\r" + " " * 70 + "\r")
    sys.stderr.flush()


SERVERS: dict[str, Callable[[], Any]] = {
    "stepwise": stepwise_server,
    "selectors": lambda: in_process(selectors_server),
    "asyncio": lambda: in_process(asyncio_server),
    "pipe": lambda: in_process(pipe_server),
    # the same server without spinning before it sleeps (server.core.idle): the spin's price
    "stepwise-nospin": lambda: stepwise_server(spin=False),
}
DEFAULT_SERVERS = "stepwise,selectors,asyncio,pipe"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement (default 3)")
    parser.add_argument("--clients", type=int, default=2, help="load client processes (default 2)")
    parser.add_argument("--only", choices=list(SCENARIOS), action="append", help="run only these")
    parser.add_argument(
        "--servers",
        default=DEFAULT_SERVERS,
        help=f"comma-separated, of {', '.join(SERVERS)} (default {DEFAULT_SERVERS})",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure each server this many times, taking turns; print the medians and "
        "each round's ratio (default 1)",
    )
    parser.add_argument(
        "--load",
        choices=("python", "c"),
        default="python",
        help="python: --clients load processes (the default); c: one C process, epoll, "
        "that leaves the server most of the machine (tools/loadgen.c, built with cc)",
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="instead: where one request's round trip goes, hop by hop (tools.trace_hops)",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, not {args.rounds}")
    if args.trace:
        from tools.trace_hops import report, run

        print(report(run()))
        return 0
    names = [n for n in args.servers.split(",") if n]
    unknown = set(names) - set(SERVERS)
    if unknown:
        parser.error(
            f"unknown server(s) {', '.join(sorted(unknown))}; choose from {', '.join(SERVERS)}"
        )
    scenarios = args.only or list(SCENARIOS)
    with ExitStack() as stack:
        if args.load == "c":
            try:
                binary = stack.enter_context(loadgen.built())
            except loadgen.NoCompiler as err:
                parser.error(str(err))
            load = f"one C load generator ({loadgen.SOURCE.name})"
        else:
            binary = None
            load = f"{args.clients} Python load client process(es)"
        print(
            f"echo servers on 127.0.0.1, {args.seconds:g} s per figure after {WARMUP} s "
            f"warm-up, {load}, {os.cpu_count()} cores"
        )
        _table(names, scenarios, args.seconds, args.clients, binary, args.rounds)
    return 0


def _table(
    names: list[str],
    scenarios: list[str],
    seconds: float,
    clients: int,
    binary: str | None,
    rounds: int,
) -> None:
    print(
        f"{'scenario':<12} {'server':<16} {'requests/s':>11} {'p50 us':>8} {'p99 us':>8} "
        f"{'x selectors':>11} {'p50 x sel':>9} {'client cores':>12} {'server cores':>12} "
        f"{'cpu us/req':>10}" + ("  x selectors by round" if rounds > 1 else "")
    )
    for scenario in scenarios:
        conns, inflight, size = SCENARIOS[scenario]
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
        for n in range(rounds):  # the servers take turns, so a noisy minute hits them all
            for name in names:
                label = f"{scenario} {name}" + (f" ({n + 1}/{rounds})" if rounds > 1 else "")
                with SERVERS[name]() as (port, pids), ServerCpu(pids, seconds) as cpu:
                    if binary is None:
                        r = run_load(port, conns, inflight, size, seconds, clients, label)
                    else:
                        r = loadgen.run(binary, port, conns, inflight, size, WARMUP, seconds)
                r["server_cores"] = cpu.cores
                r["cpu_us"] = cpu.cores * 1e6 / r["rps"] if r["rps"] else float("nan")
                runs[name].append(r)
        base = runs.get("selectors")
        for name, results in runs.items():
            r = _median(results)
            if not r["rps"]:
                print(
                    f"{scenario:<12} {name:<16} {'no replies: deadlocked (both pipes full)':>40}"
                    if name == "pipe"
                    else f"{scenario:<12} {name:<16} {'no replies':>40}",
                    flush=True,
                )
                continue
            ratio = p50_ratio = by_round = "-"
            if base:
                ratios = [a["rps"] / b["rps"] for a, b in zip(results, base, strict=True)]
                ratio = f"{statistics.median(ratios):.2f}x"
                p50s = [a["p50"] / b["p50"] for a, b in zip(results, base, strict=True)]
                p50_ratio = f"{statistics.median(p50s):.2f}x"
                by_round = " ".join(f"{x:.2f}" for x in ratios)
            print(
                f"{scenario:<12} {name:<16} {r['rps']:>11,.0f} {r['p50']:>8.0f} {r['p99']:>8.0f} "
                f"{ratio:>11} {p50_ratio:>9} {r['client_cores']:>12.2f} "
                f"{r['server_cores']:>12.2f} {r['cpu_us']:>10.2f}"
                + (f"  {by_round}" if rounds > 1 else ""),
                flush=True,
            )


class ServerCpu:
    """The CPU time a server's processes (the given ones and their children)
    use while a load is measured: sampled WARMUP seconds after the load
    starts and ``seconds`` later, from /proc.  CPU per request does not
    depend on how the scheduler happened to place the processes, so it
    shows a change in the work done per request where requests/s is noisy."""

    def __init__(self, pids: list[int], seconds: float) -> None:
        self.pids, self.seconds = pids, seconds
        self.samples: list[float] = []
        self.timers: list[threading.Timer] = []
        self.cores = float("nan")

    def __enter__(self) -> ServerCpu:
        for delay in (WARMUP, WARMUP + self.seconds):
            t = threading.Timer(delay, self._sample)
            t.daemon = True
            t.start()
            self.timers.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        for t in self.timers:
            t.cancel()
        if len(self.samples) == 2:
            self.cores = (self.samples[1] - self.samples[0]) / self.seconds

    def _sample(self) -> None:
        self.samples.append(sum(_cpu_seconds(pid) for pid in _tree(self.pids)))


def _tree(pids: list[int]) -> list[int]:
    out, todo = [], list(pids)
    while todo:
        pid = todo.pop()
        out.append(pid)
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                todo += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return out


def _cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0  # gone
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _median(results: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the rounds."""
    return {k: statistics.median(r[k] for r in results) for k in results[0]}


if __name__ == "__main__":
    sys.exit(main())
