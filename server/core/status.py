"""The status board: who runs, how often they restarted, and why (pure core).

A small region of the segment that the supervisor, the workers and the
inspector share.  Every word has exactly one writer, and every word is one
aligned u64 store, so a reader never sees a torn value.  Each role has a
block of 16 words at ``8 + 16 * role`` (0 supervisor, 1 connect, 2 logic,
3 relay)::

    word  field                    written by
    ----  -----------------------  ---------------------------------------------
       0  magic b"STATUS02"        INIT
    +0    pid                      supervisor (0: not running)
    +1    restarts                 supervisor: in all runs on this segment
    +2    heartbeat                the worker's heartbeat thread (a counter)
    +3    started_at (unix ms)     supervisor
    +4    last_reason (Reason)     supervisor: why the last (re)start happened
    +5    last_detail              supervisor: exit status / signal / seconds
    +6    beat_at                  the heartbeat thread: CLOCK_MONOTONIC ms
    +7    requests                 logic: requests (frames) started, ever
    +8    busy_since               logic: CLOCK_MONOTONIC ms when the code in
                                   flight started; 0 while idle
    +9    busy_conn                logic: the connection of the code in flight
    +10   (reserved)
    +11   progress                 the worker: codes it consumed or delivered
    +12   run_restarts             supervisor: restarts in this run
    +13   state (WorkerState)      supervisor
      80  connections_open         connect
      81  connections_accepted     connect
      82  connections_refused      connect (the server was full)
      83  connections_lost         connect (open when a connect process died)
      84  replies_dropped          connect (the connection was gone)
      85  closed_for_abuse         connect (frame too large, not reading, idle)
      86  app_errors               logic (the app raised)

Everything read back is a number that is only displayed or compared, except
``last_reason`` and ``state``, which are checked against their enums.
CLOCK_MONOTONIC is one clock for every process of the machine, so an age is
``now - beat_at`` in any of them.
"""

from __future__ import annotations

import enum
import time
from typing import Any

from .placed import InSegment, magic_words
from .supervision import describe_exit

MAGIC = int.from_bytes(b"STATUS02", "little")
REGION_SIZE = 1024
KIND = "StatusBoard"


class Role(enum.IntEnum):
    SUPERVISOR = 0
    CONNECT = 1
    LOGIC = 2
    RELAY = 3  # a bus relay, on its own board (``server.proc.relaysup``)


SERVER_ROLES = (Role.SUPERVISOR, Role.CONNECT, Role.LOGIC)
RELAY_ROLES = (Role.SUPERVISOR, Role.RELAY)
RELAY_BOARD = "relay_status"  # the name of a relay's board: it shows the relay roles


class WorkerState(enum.IntEnum):
    STOPPED = 0
    RUNNING = 1
    RESTARTING = 2  # it ended; the new one starts at once
    BACKING_OFF = 3  # it ended without progress; the new one waits a little


class Reason(enum.IntEnum):
    """Why a process was (re)started."""

    FIRST_START = 0
    EXITED = 1  # detail: exit status
    KILLED = 2  # detail: signal number
    HUNG = 3  # detail: seconds without a heartbeat
    RECOVERED = 4  # the supervisor found the segment of an earlier run
    SLOW = 5  # detail: seconds one request had run
    REINIT = 6  # the segment was corrupt: saved, re-initialised
    RELOADED = 7  # SIGHUP: a graceful restart with the code on disk

    def describe(self, detail: int) -> str:
        if self is Reason.FIRST_START:
            return "first start"
        if self is Reason.EXITED:
            return describe_exit(detail)
        if self is Reason.KILLED:
            return describe_exit(-detail)
        if self is Reason.HUNG:
            return f"hung: no heartbeat for {detail} s, killed"
        if self is Reason.SLOW:
            return f"slow: one request ran {detail} s, killed"
        if self is Reason.REINIT:
            return "the segment was corrupt: saved and re-initialised"
        if self is Reason.RELOADED:
            return "restarted gracefully on SIGHUP, with the code on disk"
        return "started again on the segment of an earlier run (RECOVER)"


_PID, _RESTARTS, _HEARTBEAT, _STARTED, _REASON, _DETAIL, _BEAT_AT, _REQUESTS = range(8)
_BUSY_SINCE, _BUSY_CONN, _RESERVED, _PROGRESS, _RUN_RESTARTS, _STATE = range(8, 14)
ROLE_WORDS = 16
COUNTERS = (
    "connections_open",
    "connections_accepted",
    "connections_refused",
    "connections_lost",
    "replies_dropped",
    "closed_for_abuse",
    "app_errors",
    "descriptors_held",  # the supervisor's duplicates of client sockets
)
_COUNTER_BASE = 80


def _role_word(role: Role, field: int) -> int:
    return 8 + ROLE_WORDS * role + field


class WorkerMeter:
    """The words one worker writes about itself, each a one-word view
    (``meter.requests[0] += 1``): no index arithmetic on the hot path."""

    def __init__(self, words: memoryview, role: Role) -> None:
        def word(field: int) -> memoryview:
            i = _role_word(role, field)
            return words[i : i + 1]

        self.heartbeat = word(_HEARTBEAT)
        self.beat_at = word(_BEAT_AT)
        self.requests = word(_REQUESTS)
        self.busy_since = word(_BUSY_SINCE)
        self.busy_conn = word(_BUSY_CONN)
        self.progress = word(_PROGRESS)
        self.views = (
            self.heartbeat,
            self.beat_at,
            self.requests,
            self.busy_since,
            self.busy_conn,
            self.progress,
        )

    def release(self) -> None:
        for view in self.views:
            view.release()


class StatusBoard(InSegment):
    KIND = KIND
    SIZE = REGION_SIZE

    def __init__(self, region: memoryview, *, init: bool) -> None:
        self._w = magic_words(region, REGION_SIZE, MAGIC, "status board", "status.magic", init=init)
        # name -> word index, for the hot counters
        self._counter = {name: _COUNTER_BASE + i for i, name in enumerate(COUNTERS)}
        self._meters: list[WorkerMeter] = []

    @classmethod
    def on_region(
        cls, region: memoryview, param: int, *, init: bool, observer: bool
    ) -> StatusBoard:
        return cls(region, init=init)

    def release(self) -> None:
        for meter in self._meters:
            meter.release()
        self._w.release()

    # -- supervisor -------------------------------------------------------------
    def supervisor_started(self) -> None:
        """A new run: restarts in this run start from 0."""
        for role in Role:
            self._w[_role_word(role, _RUN_RESTARTS)] = 0

    def started(self, role: Role, pid: int, reason: Reason, detail: int = 0) -> None:
        w = self._w
        if reason is not Reason.FIRST_START:  # RECOVERED counts the supervisor's runs
            w[_role_word(role, _RESTARTS)] += 1
            if reason is not Reason.RECOVERED:
                w[_role_word(role, _RUN_RESTARTS)] += 1
        w[_role_word(role, _REASON)] = reason
        w[_role_word(role, _DETAIL)] = max(0, detail)
        w[_role_word(role, _STARTED)] = int(time.time() * 1000)
        w[_role_word(role, _PID)] = pid
        w[_role_word(role, _STATE)] = WorkerState.RUNNING

    def stopped(self, role: Role, state: WorkerState = WorkerState.STOPPED) -> None:
        self._w[_role_word(role, _PID)] = 0
        self._w[_role_word(role, _STATE)] = state

    # -- workers ------------------------------------------------------------------
    def meter(self, role: Role) -> WorkerMeter:
        """The words a worker writes about itself (released with the board)."""
        meter = WorkerMeter(self._w, role)
        self._meters.append(meter)
        return meter

    def busy(self, role: Role) -> bool:
        return self._w[_role_word(role, _BUSY_SINCE)] != 0

    def requests(self, role: Role) -> int:
        return self._w[_role_word(role, _REQUESTS)]

    def progress(self, role: Role) -> int:
        return self._w[_role_word(role, _PROGRESS)]

    def heartbeat(self, role: Role) -> int:
        return self._w[_role_word(role, _HEARTBEAT)]

    def restarts(self, role: Role) -> int:
        return self._w[_role_word(role, _RESTARTS)]

    def pid(self, role: Role) -> int:
        return self._w[_role_word(role, _PID)]

    def add(self, counter: str, n: int = 1) -> None:
        self._w[self._counter[counter]] += n

    def set(self, counter: str, value: int) -> None:
        self._w[self._counter[counter]] = value

    def get(self, counter: str) -> int:
        return self._w[self._counter[counter]]

    # -- inspector ------------------------------------------------------------------
    def report(self, name: str) -> dict[str, Any]:
        return self.describe(RELAY_ROLES if name == RELAY_BOARD else SERVER_ROLES)

    def describe(self, roles: tuple[Role, ...] = SERVER_ROLES) -> dict[str, Any]:
        w = self._w
        processes: dict[str, Any] = {}
        for role in roles:
            raw_reason = w[_role_word(role, _REASON)]
            detail = w[_role_word(role, _DETAIL)]
            try:
                why = Reason(raw_reason).describe(detail)
            except ValueError:
                why = f"unknown reason {raw_reason} (corrupt?)"
            try:
                state = WorkerState(w[_role_word(role, _STATE)]).name.lower().replace("_", " ")
            except ValueError:
                state = f"unknown state {w[_role_word(role, _STATE)]} (corrupt?)"
            processes[role.name.lower()] = {
                "pid": w[_role_word(role, _PID)] or None,
                "state": state,
                "restarts": w[_role_word(role, _RESTARTS)],
                "restarts_this_run": w[_role_word(role, _RUN_RESTARTS)],
                "heartbeat": w[_role_word(role, _HEARTBEAT)],
                "beat_at_ms": w[_role_word(role, _BEAT_AT)],
                "started_at_ms": w[_role_word(role, _STARTED)],
                "last_start": why,
                "requests": w[_role_word(role, _REQUESTS)],
                "busy_since_ms": w[_role_word(role, _BUSY_SINCE)],
                "busy_conn": w[_role_word(role, _BUSY_CONN)],
                "progress": w[_role_word(role, _PROGRESS)],
            }
        counters = {name: w[i] for name, i in self._counter.items()}
        return {"processes": processes, "counters": counters}
