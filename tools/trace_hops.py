"""Where one request's round trip goes, hop by hop (``python -m tools.bench_server --trace``).

One connection, one 64-byte request in flight, ``n`` times, from a plain
blocking client with ``TCP_NODELAY``: against ``python -m server run --app
echo`` started with ``STCP_TRACE`` (``server.proc.trace``: its connect and
logic processes note when each hop happens), and, with the same client,
against the one-process ``selectors`` server, side by side.  The client
notes when it sends and when it has the reply, on the same clock
(CLOCK_MONOTONIC), so every hop of every request is known::

    send -> read -> pushed -> step -> replied -> deliver -> write -> reply

``hops(requests, events)`` matches them (pure, tested): for each request,
the first event of each kind between its send and its reply; a request
missing one is left out and counted.  A process that was already looking
when the other one published (a spinning waiter) may note its start a
moment before the other notes its end: that hop counts as 0.
"""

from __future__ import annotations

import socket
import statistics
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

from server.proc.trace import EVENTS, TRACE_ENV

HOPS = [
    ("client send -> connect reads it", "send", "read"),
    ("connect: read, frame, queue the code", "read", "pushed"),
    ("queued -> logic steps (its wake-up)", "pushed", "step"),
    ("logic: take it, the app, publish", "step", "replied"),
    ("published -> connect delivers (wake-up)", "replied", "deliver"),
    ("connect: take the reply off the queue", "deliver", "write"),
    ("write -> client has it (send, wake-up)", "write", "reply"),
]


def hops(
    requests: list[tuple[int, int]], events: list[tuple[str, int]]
) -> tuple[dict[str, list[float]], int]:
    """Each hop's durations in µs, over the requests whose every event was
    found; and how many were left out."""
    events = sorted(events, key=lambda e: e[1])
    out: dict[str, list[float]] = {name: [] for name, _, _ in HOPS}
    left_out = 0
    i = 0
    for sent, got in requests:
        while i < len(events) and events[i][1] < sent:
            i += 1
        seen: dict[str, int] = {"send": sent, "reply": got}
        j = i
        while j < len(events) and events[j][1] <= got:
            seen.setdefault(events[j][0], events[j][1])
            j += 1
        if any(k not in seen for k in EVENTS):
            left_out += 1
            continue
        # A process that was already looking (spinning, or in its loop) starts its
        # step a moment before the other one's "done" is noted: that hop took 0.
        last = 0
        for k in ("send", *EVENTS, "reply"):
            last = seen[k] = max(seen[k], last)
        for name, a, b in HOPS:
            out[name].append((seen[b] - seen[a]) / 1000)
    return out, left_out


def _round_trips(port: int, n: int, size: int = 64) -> list[tuple[int, int]]:
    frame = struct.pack(">I", size) + b"x" * size
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        times: list[tuple[int, int]] = []
        for _ in range(n):
            sent = time.monotonic_ns()
            sock.sendall(frame)
            got = b""
            while len(got) < len(frame):
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    raise TimeoutError(
                        f"no reply within 10 s on port {port} (after {len(times)} round trips)"
                    ) from None
                if not chunk:
                    raise ConnectionError("the server closed the connection")
                got += chunk
            times.append((sent, time.monotonic_ns()))
    return times


def run(n: int = 3000, warmup: int = 300) -> dict[str, Any]:
    from tools.bench_server import in_process, selectors_server, stepwise_server

    events: list[tuple[str, int]] = []
    with tempfile.TemporaryDirectory(prefix="stcp-trace-") as name:  # gone also on an error
        folder = Path(name)
        with stepwise_server(env={TRACE_ENV: str(folder)}) as (port, _pids):
            ours = _round_trips(port, warmup + n)[warmup:]
        for path in folder.glob("*.trace"):
            for row in path.read_text().splitlines():
                kind, ns = row.split()
                events.append((kind, int(ns)))
    with in_process(selectors_server) as (sel_port, _pids):
        theirs = _round_trips(sel_port, warmup + n)[warmup:]
    per_hop, left_out = hops(ours, events)
    return {
        "n": n,
        "hops": {name: statistics.median(v) for name, v in per_hop.items() if v},
        "hops_p90": {name: _p(v, 0.9) for name, v in per_hop.items() if v},
        "left_out": left_out,
        "ours_p50": statistics.median((b - a) / 1000 for a, b in ours),
        "selectors_p50": statistics.median((b - a) / 1000 for a, b in theirs),
    }


def _p(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def report(r: dict[str, Any]) -> str:
    lines = [
        f"one request's round trip: 1 connection, 1 request of 64 B in flight, {r['n']} times",
        f"{'hop':<42} {'p50 us':>8} {'p90 us':>8}",
    ]
    for name, value in r["hops"].items():
        lines.append(f"{name:<42} {value:>8.1f} {r['hops_p90'][name]:>8.1f}")
    lines += [
        f"{'sum of the hops p50':<42} {sum(r['hops'].values()):>8.1f}",
        f"{'measured round trip p50 (stepwise)':<42} {r['ours_p50']:>8.1f}",
        f"{'same client, selectors server p50':<42} {r['selectors_p50']:>8.1f}",
        f"stepwise / selectors: {r['ours_p50'] / r['selectors_p50']:.2f}x"
        f"  ({r['left_out']} requests left out: an event missing)",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(run()))
