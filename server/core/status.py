"""The status board: who runs, how often they restarted, and why (pure core).

A small region of the segment that the supervisor, the workers and the
inspector share.  Every word has exactly one writer, and every word is one
aligned u64 store, so a reader never sees a torn value::

    word   field                    written by
    -----  -----------------------  -------------------------------------------
        0  magic b"STATUS01"        INIT
    8*r+8  pid                      supervisor (r = role: 0 supervisor,
    8*r+9  restarts                 supervisor          1 connect, 2 logic)
    8*r+10 heartbeat                the process itself, every loop turn
    8*r+11 started_at (unix ms)     supervisor
    8*r+12 last_reason (Reason)     supervisor: why the last restart happened
    8*r+13 last_detail              supervisor: exit status / signal / seconds
    8*r+14 (reserved)
       32  connections_open         connect
       33  connections_accepted     connect
       34  connections_refused      connect (the server was full)
       35  connections_lost         connect (open when a connect process died)
       36  replies_dropped          connect (the connection was gone)
       37  closed_for_abuse         connect (frame too large, not reading, idle)
       38  app_errors               logic (the app raised)

Everything read back is a number that is only displayed or compared, except
``last_reason``, which is checked against ``Reason``.
"""

from __future__ import annotations

import enum
import time
from typing import Any

from ..errors import CorruptSegment
from .placed import InSegment
from .supervision import describe_exit

MAGIC = int.from_bytes(b"STATUS01", "little")
REGION_SIZE = 512
KIND = "StatusBoard"


class Role(enum.IntEnum):
    SUPERVISOR = 0
    CONNECT = 1
    LOGIC = 2


class Reason(enum.IntEnum):
    """Why a process was (re)started."""

    FIRST_START = 0
    EXITED = 1  # detail: exit status
    KILLED = 2  # detail: signal number
    HUNG = 3  # detail: seconds without a heartbeat
    RECOVERED = 4  # the supervisor found the segment of an earlier run

    def describe(self, detail: int) -> str:
        if self is Reason.FIRST_START:
            return "first start"
        if self is Reason.EXITED:
            return describe_exit(detail)
        if self is Reason.KILLED:
            return describe_exit(-detail)
        if self is Reason.HUNG:
            return f"hung: no heartbeat for {detail} s, killed"
        return "started again on the segment of an earlier run (RECOVER)"


_PID, _RESTARTS, _HEARTBEAT, _STARTED, _REASON, _DETAIL = range(6)
COUNTERS = (
    "connections_open",
    "connections_accepted",
    "connections_refused",
    "connections_lost",
    "replies_dropped",
    "closed_for_abuse",
    "app_errors",
)
_COUNTER_BASE = 32


def _role_word(role: Role, field: int) -> int:
    return 8 + 8 * role + field


class StatusBoard(InSegment):
    KIND = KIND
    SIZE = REGION_SIZE

    def __init__(self, region: memoryview, *, init: bool) -> None:
        if len(region) != REGION_SIZE:
            raise ValueError(f"a status board takes {REGION_SIZE} bytes, got {len(region)}")
        self._w = region.cast("Q")
        if init:
            for i in range(len(self._w)):
                self._w[i] = 0
            self._w[0] = MAGIC
        elif self._w[0] != MAGIC:
            raise CorruptSegment(
                f"status board magic is {self._w[0]:#x}, expected {MAGIC:#x}: the segment is "
                f"corrupt; remove it (python -m server clean) to start afresh",
                field="status.magic",
                found=self._w[0],
                expected=MAGIC,
            )
        # name -> word index, for the hot counters
        self._counter = {name: _COUNTER_BASE + i for i, name in enumerate(COUNTERS)}

    @classmethod
    def on_region(
        cls, region: memoryview, param: int, *, init: bool, observer: bool
    ) -> StatusBoard:
        return cls(region, init=init)

    def release(self) -> None:
        self._w.release()

    # -- supervisor -------------------------------------------------------------
    def started(self, role: Role, pid: int, reason: Reason, detail: int = 0) -> None:
        w = self._w
        if reason is not Reason.FIRST_START:  # RECOVERED counts the supervisor's runs
            w[_role_word(role, _RESTARTS)] += 1
        w[_role_word(role, _REASON)] = reason
        w[_role_word(role, _DETAIL)] = max(0, detail)
        w[_role_word(role, _STARTED)] = int(time.time() * 1000)
        w[_role_word(role, _PID)] = pid

    def stopped(self, role: Role) -> None:
        self._w[_role_word(role, _PID)] = 0

    # -- workers ------------------------------------------------------------------
    def heartbeat_word(self, role: Role) -> tuple[memoryview, int]:
        """(words, index): a worker bumps ``words[index] += 1`` each turn."""
        return self._w, _role_word(role, _HEARTBEAT)

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
        return self.describe()

    def describe(self) -> dict[str, Any]:
        w = self._w
        processes: dict[str, Any] = {}
        for role in Role:
            raw_reason = w[_role_word(role, _REASON)]
            detail = w[_role_word(role, _DETAIL)]
            try:
                why = Reason(raw_reason).describe(detail)
            except ValueError:
                why = f"unknown reason {raw_reason} (corrupt?)"
            processes[role.name.lower()] = {
                "pid": w[_role_word(role, _PID)] or None,
                "restarts": w[_role_word(role, _RESTARTS)],
                "heartbeat": w[_role_word(role, _HEARTBEAT)],
                "started_at_ms": w[_role_word(role, _STARTED)],
                "last_start": why,
            }
        counters = {name: w[i] for name, i in self._counter.items()}
        return {"processes": processes, "counters": counters}
