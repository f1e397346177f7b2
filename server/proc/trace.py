"""Where a request's time goes: hop timestamps, for ``tools.bench_server --trace``.

Benchmark-only.  With ``STCP_TRACE=FOLDER`` in its environment, the connect
and the logic process wrap a few methods of their classes at start
(``install``; nothing is wrapped, and nothing costs anything, without it)
and note, in
CLOCK_MONOTONIC nanoseconds (one clock for every process of the machine),
when each hop of a request happens::

    event     process  when
    --------  -------  ------------------------------------------------------
    read      connect  it starts reading a readable client socket
    pushed    connect  its inbound codes are in the queue (the tail moved)
    step      logic    a step that consumed codes started (it woke, or looked)
    replied   logic    that step's replies are published (before it consumes)
    deliver   connect  it starts taking codes from the outbound queue
    write     connect  it starts writing a client's bytes to its socket

At its exit each process writes its events to ``FOLDER/<role>-<pid>.trace``,
one ``event ns`` per line.  With one connection and one request in flight,
the hops follow one another, and ``tools.bench_server`` matches each
request's events by time (the first of each kind inside the request's send
and receive) to print the median of each hop.
"""

from __future__ import annotations

import atexit
import functools
import os
import time
from collections.abc import Callable
from typing import Any

TRACE_ENV = "STCP_TRACE"
EVENTS = ("read", "pushed", "step", "replied", "deliver", "write")


class Tracer:
    def __init__(self, folder: str, role: str) -> None:
        self.path = os.path.join(folder, f"{role}-{os.getpid()}.trace")
        self.events: list[tuple[str, int]] = []
        atexit.register(self.dump)

    def note(self, event: str, ns: int | None = None) -> None:
        self.events.append((event, time.monotonic_ns() if ns is None else ns))

    def dump(self) -> None:
        with open(self.path, "w") as f:
            f.writelines(f"{event} {ns}\n" for event, ns in self.events)


def tracer(role: str) -> Tracer | None:
    folder = os.environ.get(TRACE_ENV)
    return Tracer(folder, role) if folder else None


def install(role: str) -> None:
    """Wrap the methods of ``role``'s classes (before the process makes
    them) when ``STCP_TRACE`` names a folder; else do nothing."""
    t = tracer(role)
    if t is None:
        return
    if role == "connect":
        from .connect import ConnectProcess

        _trace_connect(ConnectProcess, t)
    elif role == "logic":
        from ..core.stepper import LogicStepper

        _trace_logic(LogicStepper, t)


def _wrap(cls: Any, name: str, around: Callable[..., Any]) -> None:
    inner = getattr(cls, name)

    @functools.wraps(inner)
    def wrapper(self: Any, *args: Any) -> Any:
        return around(inner, self, *args)

    setattr(cls, name, wrapper)


def _trace_connect(cls: Any, t: Tracer) -> None:
    def read(inner: Callable[..., Any], proc: Any, *args: Any) -> Any:
        t.note("read")
        return inner(proc, *args)

    def push(inner: Callable[..., Any], proc: Any) -> Any:
        before = proc.inbound.ring.tail
        result = inner(proc)
        if proc.inbound.ring.tail != before:
            t.note("pushed")
        return result

    def deliver(inner: Callable[..., Any], proc: Any) -> Any:
        start = time.monotonic_ns()
        before = proc.anchors.read
        result = inner(proc)
        if proc.anchors.read != before:
            t.note("deliver", start)
        return result

    def flush(inner: Callable[..., Any], proc: Any, *args: Any) -> Any:
        t.note("write")  # before: the client may have the bytes before send() returns here
        return inner(proc, *args)

    _wrap(cls, "read", read)
    _wrap(cls, "push", push)
    _wrap(cls, "deliver", deliver)
    _wrap(cls, "flush", flush)


def _trace_logic(cls: Any, t: Tracer) -> None:
    def step(inner: Callable[..., int], stepper: Any) -> int:
        start = time.monotonic_ns()
        done = inner(stepper)
        if done > 0:
            t.note("step", start)
        return done

    def push(inner: Callable[..., None], stepper: Any, replies: list[bytes]) -> None:
        inner(stepper, replies)
        t.note("replied")  # published: the consuming of the codes comes after

    _wrap(cls, "step", step)
    _wrap(cls, "_push", push)
