"""Crash points: kill this process at a named point of a critical section,
for tests that must hit that point deterministically, not by chance.

``STCP_CRASH_AT=push.counted`` makes the process ``SIGKILL`` itself the
first time it reaches ``push.counted``; ``STCP_CRASH_AT=push.counted:5`` the
fifth time.  The variable is read when the object that has the points is
made (``CrashPoints.from_env(known)``); an unknown point name is an error at
once, not a test that silently never crashes.  With the variable unset,
``hit`` is never called: the object keeps ``None`` and its hot paths test
one attribute.

The points live in the process shell (``server.ipc``); the pure core has
no test hooks.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Sequence

CRASH_ENV = "STCP_CRASH_AT"


class CrashPoints:
    """One armed point: ``hit(name)`` counts visits to it and kills the
    process on the chosen one.  ``before_kill`` (optional) runs first, with
    the point's name: to leave something half done on purpose."""

    def __init__(self, point: str, nth: int = 1) -> None:
        self.point = point
        self.left = nth
        self.before_kill: Callable[[str], None] | None = None

    @classmethod
    def from_env(cls, known: Sequence[str]) -> CrashPoints | None:
        spec = os.environ.get(CRASH_ENV, "")
        if not spec:
            return None
        point, _, nth = spec.partition(":")
        if point not in known:
            raise ValueError(
                f"{CRASH_ENV}={spec!r}: no crash point {point!r}; the points are {', '.join(known)}"
            )
        try:
            count = int(nth) if nth else 1
        except ValueError:
            count = 0
        if count < 1:
            raise ValueError(f"{CRASH_ENV}={spec!r}: after ':' comes a visit number (1, 2, ...)")
        return cls(point, count)

    def hit(self, name: str) -> None:
        if name != self.point:
            return
        self.left -= 1
        if self.left:
            return
        if self.before_kill is not None:
            self.before_kill(name)
        os.kill(os.getpid(), signal.SIGKILL)
