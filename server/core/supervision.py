"""The supervisor's decisions about stopping, and the words for an exit (pure).

The supervisor process (``server.proc.supervisor``) only observes and acts:
it asks what to do, and does it.  Its watchdog's decisions (dead, hung or
slow, and when to restart) are in ``server.core.watchdog``; this module has

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
* ``Stall``: a graceful stop waits as long as work moves, and gives up only
  when nothing moved for ``--stop-timeout`` seconds.
* ``describe_exit``: a process's exit status in words, said one way
  everywhere (the log, the inspector, the tutorial).
"""

from __future__ import annotations

import enum


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


class Stall:
    """Has ``token`` (any value that changes while work moves: counters,
    positions) stood still for ``timeout`` seconds?"""

    def __init__(self, timeout: float, now: float) -> None:
        self.timeout = timeout
        self.token: object = None
        self.since = now

    def expired(self, token: object, now: float) -> bool:
        if token != self.token:
            self.token, self.since = token, now
            return False
        return now - self.since >= self.timeout


def stop_leftover(timeout: float, inbound: int, outbound: int, unwritten: int) -> str:
    """What a stop that gave up leaves behind, in words."""
    return (
        f"stopping: nothing moved for {timeout:g} s (--stop-timeout); left in the segment for "
        f"the next start: {inbound} code(s) inbound, {outbound} outbound; {unwritten} reply "
        f"byte(s) not yet written are lost"
    )


def orphan_leftover(inbound: int, unqueued: int) -> str:
    """What a connect process that outlived its supervisor leaves behind."""
    lost = f"; {unqueued} request code(s) read but not queued are lost" if unqueued else ""
    return (
        f"stopping without the supervisor: every reply is written; {inbound} code(s) stay in "
        f"the inbound queue for the next start{lost}"
    )


UNKNOWN_EXIT = 1 << 16  # the returncode of an adopted worker (not our child): not known


def describe_exit(returncode: int, signal_name: str = "") -> str:
    """``Popen.returncode`` in words: ``exited with status 3``, ``killed by
    SIGKILL`` (``signal_name`` comes from the caller, which may know the
    names of signals; without it: ``killed by signal 9``)."""
    if returncode == UNKNOWN_EXIT:
        return "ended (adopted from an earlier supervisor, so how is not known)"
    if returncode < 0:
        return f"killed by {signal_name or f'signal {-returncode}'}"
    return f"exited with status {returncode}"
