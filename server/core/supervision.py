"""The supervisor's decisions (pure: numbers and a clock in, decisions out).

The supervisor process (``server.proc.supervisor``) only observes and acts:
it reads heartbeat counters and exit statuses, asks these classes what to
do, and does it.  Time is always passed in (``time.monotonic()`` in the
process, a plain number in the tests), so every decision is tested without
sleeping.

* ``Backoff``: how long to wait before restarting a worker that died.
* ``HangWatch``: has a worker's heartbeat stopped moving for too long?
* ``StopPhase``: the graceful stop, as states and a transition table (the
  h11 ``_state.py`` manner): the connect process stops first (no new
  connections or requests; queued replies are written), then the logic
  process once it has consumed every inbound code::

      phase             event             next phase
      ----------------  ----------------  ----------------
      RUNNING           STOP_REQUESTED    STOPPING_CONNECT
      STOPPING_CONNECT  CONNECT_EXITED    STOPPING_LOGIC
      STOPPING_CONNECT  SECOND_REQUEST    DONE  (kill both)
      STOPPING_LOGIC    LOGIC_EXITED      DONE
      STOPPING_LOGIC    SECOND_REQUEST    DONE  (kill both)

  Any other pair leaves the phase as it is.
* ``describe_exit``: a process's exit status in words, said one way
  everywhere (the log, the inspector, the tutorial).
"""

from __future__ import annotations

import enum


class Backoff:
    """Restart delays: ``first`` doubling up to ``most`` while a worker keeps
    dying soon after its start; back to ``first`` once one lived ``stable`` s."""

    def __init__(self, first: float = 0.1, most: float = 5.0, stable: float = 10.0) -> None:
        self.first, self.most, self.stable = first, most, stable
        self.delay = 0.0

    def next_delay(self, lived: float) -> float:
        if lived >= self.stable or not self.delay:
            self.delay = self.first
        else:
            self.delay = min(self.most, self.delay * 2)
        return self.delay


class HangWatch:
    """A worker is hung when its heartbeat has not moved for ``timeout`` s."""

    def __init__(self, timeout: float, now: float) -> None:
        self.timeout = timeout
        self.last_beat: int | None = None
        self.since = now

    def stalled_for(self, beat: int, now: float) -> float:
        if beat != self.last_beat:
            self.last_beat = beat
            self.since = now
        return now - self.since

    def hung(self, beat: int, now: float) -> bool:
        return self.stalled_for(beat, now) >= self.timeout


class StopPhase(enum.Enum):
    RUNNING = "running"
    STOPPING_CONNECT = "stopping connect"  # writes what is queued, takes nothing new
    STOPPING_LOGIC = "stopping logic"  # consumes every inbound code, then exits
    DONE = "done"


class StopEvent(enum.Enum):
    STOP_REQUESTED = "stop requested"  # the first SIGINT or SIGTERM
    SECOND_REQUEST = "second stop request"  # another one: stop at once
    CONNECT_EXITED = "connect exited"
    LOGIC_EXITED = "logic exited"


STOP_TRANSITIONS: dict[tuple[StopPhase, StopEvent], StopPhase] = {
    (StopPhase.RUNNING, StopEvent.STOP_REQUESTED): StopPhase.STOPPING_CONNECT,
    (StopPhase.STOPPING_CONNECT, StopEvent.CONNECT_EXITED): StopPhase.STOPPING_LOGIC,
    (StopPhase.STOPPING_CONNECT, StopEvent.SECOND_REQUEST): StopPhase.DONE,
    (StopPhase.STOPPING_LOGIC, StopEvent.LOGIC_EXITED): StopPhase.DONE,
    (StopPhase.STOPPING_LOGIC, StopEvent.SECOND_REQUEST): StopPhase.DONE,
}


def next_phase(phase: StopPhase, event: StopEvent) -> StopPhase:
    """Where ``event`` takes the stop from ``phase`` (see the table above)."""
    return STOP_TRANSITIONS.get((phase, event), phase)


def describe_exit(returncode: int, signal_name: str = "") -> str:
    """``Popen.returncode`` in words: ``exited with status 3``, ``killed by
    SIGKILL`` (``signal_name`` comes from the caller, which may know the
    names of signals; without it: ``killed by signal 9``)."""
    if returncode < 0:
        return f"killed by {signal_name or f'signal {-returncode}'}"
    return f"exited with status {returncode}"
