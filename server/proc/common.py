"""What every process of the server does the same way.

* ``TICK``: the longest a worker sleeps, so its heartbeat and timers move
  at least this often even when nothing happens.
* ``Parent``: has the process that started us gone (we were re-parented)?
  A worker stops then instead of living on as an orphan.
* ``exit_text``: a child's exit status in words, with the signal's name.
* ``Heartbeat``: the small thread that beats for a worker (seed 001's
  heartbeat sequence number).  It beats while the worker's loop turns, and
  also while the app runs one long request, so only a *frozen* process
  (SIGSTOP, a deadlock, a C call holding the GIL) stops beating; a slow
  request is the watchdog's other verdict (``server.core.watchdog``).
* ``signals_wake``/``drain``: signal handlers whose signals also wake a
  ``select`` (the supervisors' loops).
* ``enable_stack_dumps``: SIGUSR1 makes the worker write the Python stack
  of every thread to its log (``faulthandler``: it works even while the
  main thread holds the GIL), so a kill for hanging says where it hung.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from ..core.status import WorkerMeter
from ..core.supervision import describe_exit
from ..ipc.procinfo import alive, process_state

TICK = 0.5
PARENT_ENV = "STCP_SUPERVISOR_PID"  # set by the supervisor for the workers it starts
BEAT = 0.1  # the heartbeat thread's period
STACK_SIGNAL = signal.SIGUSR1
SPIN_ENV = "STCP_SPIN"  # benchmark-only: scales the spins before a sleep (0: none)

__all__ = ["alive", "process_state"]  # here for the process modules; they live in ipc


class Parent:
    """``gone()`` once we were re-parented.  ``pid`` is the parent we expect
    (the supervisor passes its own: a worker that starts after its
    supervisor died already has another parent, and must notice too)."""

    def __init__(self, pid: int | None = None) -> None:
        self.pid = pid or int(os.environ.get(PARENT_ENV) or 0) or os.getppid()

    def gone(self) -> bool:
        return os.getppid() != self.pid


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def exit_text(returncode: int) -> str:
    """``Popen.returncode`` in words: ``exited with status 1``, ``killed by SIGKILL``."""
    return describe_exit(returncode, signal_name(-returncode) if returncode < 0 else "")


def enable_stack_dumps() -> None:
    """On SIGUSR1, write every thread's Python stack to stderr (the log)."""
    faulthandler.register(STACK_SIGNAL, file=sys.stderr, all_threads=True, chain=False)


def spin_scale() -> float:
    """How much of the usual spin before a sleep (``server.core.idle``):
    ``STCP_SPIN``, for a benchmark that compares with none; 1 otherwise."""
    try:
        return max(0.0, float(os.environ.get(SPIN_ENV) or 1.0))
    except ValueError:
        return 1.0


def monotonic_ms() -> int:
    """CLOCK_MONOTONIC in ms: one clock for every process of the machine."""
    return int(time.monotonic() * 1000)


@contextlib.contextmanager
def signals_wake(handlers: dict[int, Any]) -> Iterator[int]:
    """Install ``handlers`` (signal number -> handler) and make every signal
    also write to a pipe: yields its read end, for a ``select`` that a
    signal must interrupt (``drain`` it after).  Everything is put back at
    the exit."""
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    old_fd = signal.set_wakeup_fd(wake_w)
    old = {number: signal.signal(number, handler) for number, handler in handlers.items()}
    try:
        yield wake_r
    finally:
        signal.set_wakeup_fd(old_fd)
        for number, handler in old.items():
            signal.signal(number, handler)
        os.close(wake_r)
        os.close(wake_w)


def drain(fd: int) -> None:
    """Read a non-blocking pipe empty."""
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 512):
            pass


class Heartbeat:
    """Beats ``meter.heartbeat`` every ``BEAT`` seconds from a daemon thread,
    as long as the worker's loop has turned since the last beat (``turns``,
    bumped by the loop) or a request is running (``meter.busy_since``)."""

    def __init__(self, meter: WorkerMeter, period: float = BEAT) -> None:
        self.meter = meter
        self.period = period
        self.turns = 0  # the loop does ``heartbeat.turns += 1`` each turn
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._beat()
        self._thread.start()
        return self

    def _beat(self) -> None:
        self.meter.heartbeat[0] += 1
        self.meter.beat_at[0] = monotonic_ms()

    def _run(self) -> None:
        seen = -1
        while not self._stop.wait(self.period):
            if self.turns != seen or self.meter.busy_since[0]:
                seen = self.turns
                self._beat()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(1.0)
