"""Chaos: kill (or stop) the server's processes under a verifying load.

    python -m tools.chaos --kill logic --count 200
    python -m tools.chaos --kill logic,connect --every 0.2-1.0 --seconds 60 --plot chaos.svg
    python -m tools.chaos --stop logic --count 3 --hang-timeout 1
    python -m tools.chaos --port 7000 --key 0x53544350 --kill logic   # a server already running

It starts the echo server on a free port and a random key (or uses one that
runs: ``--port`` and ``--key``), and drives it with ``--conns`` connections,
``--window`` requests in flight on each.  Every request is unique: its
payload is (connection, sequence number, filler, CRC-32), so every reply is
checked for the right connection, the next sequence number and an intact
checksum.  Meanwhile it ``SIGKILL``s (``--kill``) or ``SIGSTOP``s (``--stop``)
a process chosen at random among the roles named, every ``--every`` seconds
(a range picks a random interval), ``--count`` times or for ``--seconds``.
Each fault waits until the server answered a request sent after the one
before (at most 10 s): a fault hits a server that recovered, not a worker
still starting (killing those in a row is a crash loop, which the watchdog
answers by backing off, on purpose).
A killed supervisor is replaced by running ``python -m server run`` again.

The report counts requests, replies, lost (a live connection never got its
reply), duplicated, reordered and corrupted replies, client disconnects
(with the requests that were in flight on them), restarts, and the time
from each kill to the first reply to a request sent after it (p50, p99,
max).  ``--plot FILE.svg`` draws the reply latency over time, kills marked.
Exit status 1 on any loss, duplicate, reorder or corruption.  Only
127.0.0.1; every run is bounded in time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

from server import SHMFactory
from server.cli.inspect import describe
from tools.chaos_report import Report, percentile, write_svg

HEADER = struct.Struct(">IQ")  # connection, sequence
CRC = struct.Struct(">I")
ROLES = ("logic", "connect", "supervisor")


def request(conn: int, seq: int, rng: random.Random) -> bytes:
    body = HEADER.pack(conn, seq) + rng.randbytes(rng.randint(0, 48))
    return body + CRC.pack(zlib.crc32(body))


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


@dataclass
class Conn:
    """One load connection: what it sent and what it expects next."""

    index: int
    sock: socket.socket | None = None
    buf: bytes = b""
    next_seq: int = 0  # the next sequence number to send
    expect: int = 0  # the sequence number whose reply must come next
    sent_at: dict[int, float] = field(default_factory=dict)


class Load:
    def __init__(
        self, port: int, conns: int, window: int, report: Report, seed: int, pieces: int = 1
    ) -> None:
        self.port = port
        self.window = window
        self.pieces = pieces  # each request in up to this many writes
        self.report = report
        self.conns = [Conn(i) for i in range(conns)]
        self.stopping = threading.Event()
        self.rng = random.Random(seed)
        self.threads = [
            threading.Thread(target=self._drive, args=(c,), daemon=True) for c in self.conns
        ]
        self.lock = threading.Lock()
        self.finished = False

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _connect(self, c: Conn) -> bool:
        deadline = time.monotonic() + 30
        while not self.stopping.is_set() and time.monotonic() < deadline:
            try:
                c.sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
                c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                c.buf = b""
                return True
            except OSError:
                time.sleep(0.05)
        return False

    def _drive(self, c: Conn) -> None:
        rng = random.Random(self.rng.random())
        while not self.stopping.is_set():
            if c.sock is None and not self._connect(c):
                return
            try:
                self._pump(c, rng)
            except OSError:
                self._dropped(c)

    def _pump(self, c: Conn, rng: random.Random) -> None:
        assert c.sock is not None
        while True:
            if not self.stopping.is_set():
                while c.next_seq - c.expect < self.window:
                    c.sent_at[c.next_seq] = time.monotonic()
                    self._send(c.sock, frame(request(c.index, c.next_seq, rng)), rng)
                    self.report.requests += 1
                    c.next_seq += 1
            elif c.expect == c.next_seq:
                return  # drained
            payload = self._recv(c)
            if payload is None:
                raise ConnectionResetError("the server closed the connection")
            self._check(c, payload)

    def _send(self, sock: socket.socket, data: bytes, rng: random.Random) -> None:
        """In one write, or cut at random points into up to ``pieces``."""
        cuts = sorted(rng.sample(range(1, len(data)), min(self.pieces, len(data)) - 1))
        for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True):
            sock.sendall(data[a:b])

    def _recv(self, c: Conn) -> bytes | None:
        assert c.sock is not None
        while True:
            if len(c.buf) >= 4:
                n = int.from_bytes(c.buf[:4], "big")
                if len(c.buf) >= 4 + n:
                    payload, c.buf = c.buf[4 : 4 + n], c.buf[4 + n :]
                    return payload
            data = c.sock.recv(1 << 16)
            if not data:
                return None
            c.buf += data

    def _check(self, c: Conn, payload: bytes) -> None:
        now = time.monotonic()
        r = self.report
        body, crc = payload[:-4], payload[-4:]
        if len(payload) < HEADER.size + 4 or CRC.pack(zlib.crc32(body)) != crc:
            r.corrupted += 1
            return
        conn, seq = HEADER.unpack_from(body)
        if conn != c.index:
            r.corrupted += 1
        elif seq < c.expect:
            r.duplicated += 1
        elif seq > c.expect:
            r.reordered += 1
            c.expect = seq + 1
        else:
            c.expect += 1
            r.replies += 1
            sent = c.sent_at.pop(seq, now)
            with self.lock:
                r.latencies.append((now, now - sent, sent))

    def _dropped(self, c: Conn) -> None:
        """The server closed this connection: its requests in flight are
        gone with it (not lost by the queues)."""
        if self.finished:
            return
        self.report.disconnects += 1
        self.report.in_flight_at_disconnect += c.next_seq - c.expect
        c.expect = c.next_seq
        c.sent_at.clear()
        if c.sock is not None:
            c.sock.close()
        c.sock = None

    def stop(self, drain: float) -> None:
        self.stopping.set()
        deadline = time.monotonic() + drain
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self.finished = True
        for c in self.conns:
            self.report.lost += c.next_seq - c.expect
            if c.sock is not None:
                c.sock.close()


class Target:
    """The server under test: started here, or one that already runs."""

    def __init__(self, port: int | None, key: int | None, extra: list[str], log_path: str) -> None:
        self.key = key if key is not None else random.randint(0x1000_0000, 0x7FFF_FFFF)
        self.port = port
        self.extra = extra
        self.log_path = log_path
        self.started: list[subprocess.Popen[bytes]] = []
        self.owned = port is None

    def start(self) -> None:
        cmd = [sys.executable, "-m", "server", "run", "--key", hex(self.key)]
        cmd += ["--port", str(self.port or 0), *self.extra]
        deadline = time.monotonic() + 30
        while True:  # after a supervisor kill, its workers may still hold the segment
            with open(self.log_path, "ab") as log:
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log)
            assert proc.stdout is not None
            line = proc.stdout.readline().decode()
            if "listening on" in line:
                self.port = int(line.rsplit(":", 1)[1])
                self.started.append(proc)
                return
            proc.wait()
            if time.monotonic() > deadline:
                raise SystemExit(f"Error: the server did not start; see {self.log_path}")
            time.sleep(0.1)

    def info(self) -> dict[str, Any]:
        with SHMFactory.attach(self.key) as shm:
            return describe(shm)

    def pid(self, role: str) -> int | None:
        try:
            return self.info()["processes"][role]["pid"]
        except Exception:
            return None

    def finish(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
            if proc.stdout:
                proc.stdout.close()
        if self.owned:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    SHMFactory.remove(self.key)
                    return
                except Exception:
                    time.sleep(0.1)


def parse_every(text: str) -> tuple[float, float]:
    low, _, high = text.strip().removesuffix("s").partition("-")
    try:
        a, b = float(low.removesuffix("s")), float((high or low).removesuffix("s"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--every wants seconds like 0.5 or 0.2-1.0, got {text!r}"
        ) from None
    if not 0 < a <= b:
        raise argparse.ArgumentTypeError(f"--every wants seconds like 0.5 or 0.2-1.0, got {text!r}")
    return a, b


def parse_roles(text: str) -> list[str]:
    roles = [r for r in text.split(",") if r]
    bad = [r for r in roles if r not in ROLES]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown role(s) {bad}; choose from {', '.join(ROLES)}")
    return roles


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.chaos",
        description="Kill or stop the server's processes under a verifying load.",
        epilog=__doc__[__doc__.index("    python") : __doc__.index("It starts")],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--kill", type=parse_roles, default=[], help="roles to SIGKILL: logic,connect,supervisor"
    )
    p.add_argument(
        "--stop",
        type=parse_roles,
        default=[],
        help="roles to SIGSTOP (the watchdog must replace them)",
    )
    p.add_argument(
        "--every",
        type=parse_every,
        default=(0.2, 1.0),
        help="seconds between faults, or a range (default 0.2-1.0)",
    )
    p.add_argument("--count", type=int, default=10, help="faults to inject (default 10)")
    p.add_argument("--seconds", type=float, default=120.0, help="at most this long (default 120)")
    p.add_argument("--conns", type=int, default=10, help="load connections (default 10)")
    p.add_argument(
        "--window", type=int, default=8, help="requests in flight per connection (default 8)"
    )
    p.add_argument(
        "--pieces",
        type=int,
        default=1,
        help="send each request in up to this many writes (default 1: whole)",
    )
    p.add_argument("--port", type=int, help="use the server on this port (with --key)")
    p.add_argument("--key", type=lambda t: int(t, 0), help="its segment key")
    p.add_argument("--hang-timeout", default="2", help="for the server this starts (default 2)")
    p.add_argument("--plot", help="write the reply latency over time to this SVG file")
    p.add_argument("--log", help="the server's log (default: chaos-PID.log in the temp folder)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    faults = [("kill", r) for r in args.kill] + [("stop", r) for r in args.stop]
    if not faults:
        print("Error: name what to break: --kill ROLES and/or --stop ROLES", file=sys.stderr)
        return 2
    if (args.port is None) != (args.key is None):
        print("Error: --port and --key go together (the server that runs)", file=sys.stderr)
        return 2
    log_path = args.log or os.path.join(tempfile.gettempdir(), f"chaos-{os.getpid()}.log")
    target = Target(args.port, args.key, ["--hang-timeout", args.hang_timeout], log_path)
    report = Report()
    rng = random.Random(args.seed)
    if target.owned:
        target.start()
    assert target.port is not None
    restarts_before = _restarts(target)
    if args.pieces < 1:
        print(f"Error: --pieces wants 1 or more, got {args.pieces}", file=sys.stderr)
        return 2
    load = Load(target.port, args.conns, args.window, report, args.seed, args.pieces)
    load.start()
    started = time.monotonic()
    deadline = started + args.seconds
    try:
        time.sleep(0.5)  # let the load settle
        while len(report.kills) < args.count and time.monotonic() < deadline:
            how, role = rng.choice(faults)
            pid = target.pid(role)
            if pid:
                os.kill(pid, signal.SIGKILL if how == "kill" else signal.SIGSTOP)
                report.kills.append((time.monotonic(), f"{how} {role}"))
                if role == "supervisor" and target.owned:
                    target.start()
            _progress(report, args.count, started)
            time.sleep(rng.uniform(*args.every))
            if report.kills:
                _await_recovery(report, report.kills[-1][0], min(deadline, time.monotonic() + 10))
        time.sleep(max(args.every))  # the last fault's effect
    except KeyboardInterrupt:
        print("\ninterrupted: reporting what was seen", file=sys.stderr)
    finally:
        load.stop(drain=30)
        report.restarts = _restarts(target) - restarts_before
        report.seconds = time.monotonic() - started
        if target.owned:
            target.finish()
    report.kill_to_reply = report.recovery_times()
    _progress(report, args.count, started, final=True)
    print(json.dumps(report.summary(), indent=2) if args.json else report.text())
    if args.plot:
        write_svg(args.plot, report, started)
        print(f"plot: {args.plot}")
    print(f"server log: {log_path}")
    return 1 if report.failed() else 0


def _await_recovery(report: Report, since: float, until: float) -> None:
    """Until a request sent after ``since`` was answered (or ``until``)."""
    while time.monotonic() < until:
        for _got, _latency, sent in reversed(report.latencies[-200:]):
            if sent > since:
                return
        time.sleep(0.01)


def _restarts(target: Target) -> int:
    try:
        procs = target.info()["processes"]
        return sum(p["restarts"] for name, p in procs.items() if name != "supervisor")
    except Exception:
        return 0


def _progress(report: Report, count: int, started: float, final: bool = False) -> None:
    line = (
        f"{time.monotonic() - started:6.1f} s  faults {len(report.kills)}/{count}  "
        f"replies {report.replies}  lost {report.lost}  duplicated {report.duplicated}"
    )
    if sys.stderr.isatty():
        sys.stderr.write("\r" + line + ("\n" if final else ""))
        sys.stderr.flush()
    elif final or len(report.kills) % 10 == 0:
        print(line, file=sys.stderr, flush=True)


__all__ = ["main", "percentile"]

if __name__ == "__main__":
    sys.exit(main())
