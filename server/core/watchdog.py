"""The watchdog's decisions: dead, hung or slow, and when to restart (pure).

The supervisor observes each worker every quarter second and hands what it
saw to ``Watchdog.check(now, seen) -> actions``; it only carries the actions
out.  Time is a number passed in, so every rule below is tested with a fake
clock.  Three verdicts from three signals (seed 001 watches a heartbeat
sequence number; a timestamp alone false-kills a busy process)::

    verdict  signal                                   action
    -------  ---------------------------------------  ----------------------------
    dead     the process exited                        say how; restart
    hung     its heartbeat counter did not move for     its Python stack, then kill
             hang_timeout (a small thread beats, so     (a stopped process cannot
             only a frozen process stops: SIGSTOP, a    show one: say so, kill)
             deadlock, a C call holding the GIL)
    slow     heartbeat fine, but one request has run     its stack and a warning at
             request_timeout (its request counter did   half the timeout; at the
             not move while it was busy)                timeout its stack, then kill

A kill is two actions a moment apart: DUMP (the worker writes its stack to
the log) and, ``dump_grace`` later, KILL.  The restart decision looks at
progress: a worker that did work since it started (its progress counter
moved) or lived ``stable`` seconds is restarted at once; only a crash loop
*without* progress backs off (``first`` doubling to ``most``).  A worker
that exits with ``EXIT_CORRUPT`` (it found the segment corrupt) twice in a
row asks for REINIT: save a copy of the segment, re-initialise it, go on.

Counting attempts against a request, and setting it aside, is the logic
process's journal's business (``server.core.journal``): a kill for slowness
is one more death at that request.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from .status import Role
from .supervision import describe_exit

EXIT_CORRUPT = 75  # a worker's exit status when it found the segment corrupt (EX_TEMPFAIL)
SIGKILL = 9  # Linux's number; core does not import signal


class Verdict(enum.Enum):
    DEAD = "dead"
    HUNG = "hung"
    SLOW = "slow"


class Act(enum.Enum):
    WARN_SLOW = "warn slow"  # log a warning with the worker's stack
    DUMP = "dump"  # the worker writes its stack to the log; a KILL follows
    KILL = "kill"  # SIGKILL it
    RESTART = "restart"  # start it again after ``delay`` seconds
    REINIT = "reinit"  # save the segment, re-initialise it, restart the workers


class Action(NamedTuple):
    act: Act
    role: Role
    reason: str
    delay: float = 0.0
    verdict: Verdict | None = None


@dataclass(frozen=True)
class Seen:
    """What the supervisor observed of one worker."""

    returncode: int | None = None  # set once the process exited
    heartbeat: int = 0  # beats of its heartbeat thread
    requests: int = 0  # requests it started (only the logic process counts them)
    busy: bool = False  # a request is running now
    progress: int = 0  # units of work done (codes), ever
    frozen: bool = False  # the kernel says it is stopped (SIGSTOP, a debugger)


class _Worker:
    def __init__(self, now: float, progress: int) -> None:
        self.started_at = now
        self.progress_at_start = progress
        self.beat: int | None = None
        self.beat_since = now
        self.request: int | None = None
        self.request_since = now
        self.warned = False
        self.pending: tuple[Verdict, float, str] | None = None  # a kill after its dump
        self.killed: tuple[Verdict, str] | None = None
        self.exited = False


class Watchdog:
    def __init__(
        self,
        hang_timeout: float,
        request_timeout: float,
        *,
        first: float = 0.1,
        most: float = 5.0,
        stable: float = 3.0,
        dump_grace: float = 0.2,
        signal_name: Callable[[int], str] = lambda number: "",
    ) -> None:
        self.hang_timeout = hang_timeout
        self.request_timeout = request_timeout
        self.first, self.most, self.stable = first, most, stable
        self.dump_grace = dump_grace
        self.signal_name = signal_name
        self.workers: dict[Role, _Worker] = {}
        self.delay: dict[Role, float] = {}  # the back-off of a crash loop without progress
        self.corrupt_deaths: dict[Role, int] = {}  # in a row

    def started(self, role: Role, now: float, progress: int = 0) -> None:
        """A worker was (re)started; ``progress`` is its counter right now."""
        self.workers[role] = _Worker(now, progress)

    def forget(self, role: Role) -> None:
        """The worker is not to be watched (it is stopping, or stopped)."""
        self.workers.pop(role, None)

    def check(self, now: float, seen: dict[Role, Seen]) -> list[Action]:
        actions: list[Action] = []
        for role, s in seen.items():
            w = self.workers.get(role)
            if w is None or w.exited:
                continue
            if s.returncode is not None:
                w.exited = True
                actions += self._exited(role, w, s, now)
            else:
                actions += self._alive(role, w, s, now)
        return actions

    # -- a live worker ----------------------------------------------------------------
    def _alive(self, role: Role, w: _Worker, s: Seen, now: float) -> list[Action]:
        if w.killed is not None:
            return []  # killed: its exit comes next
        if w.pending is not None:
            verdict, kill_at, reason = w.pending
            if now < kill_at:
                return []
            w.pending = None
            w.killed = (verdict, reason)
            return [Action(Act.KILL, role, reason, verdict=verdict)]
        if s.heartbeat != w.beat:
            w.beat, w.beat_since = s.heartbeat, now
        if not s.busy or s.requests != w.request:
            w.request, w.request_since, w.warned = s.requests, now, False
        still = now - w.beat_since
        if still >= self.hang_timeout:
            reason = f"hung: no heartbeat for {still:.1f} s (--hang-timeout {self.hang_timeout:g})"
            if s.frozen:
                reason += "; it is stopped (SIGSTOP?), so it cannot show its stack"
                w.killed = (Verdict.HUNG, reason)
                return [Action(Act.KILL, role, reason, verdict=Verdict.HUNG)]
            return self._dump_then_kill(role, w, Verdict.HUNG, reason, now)
        if not s.busy:
            return []
        running = now - w.request_since
        if running >= self.request_timeout:
            reason = (
                f"slow: one request has run for {running:.1f} s "
                f"(--request-timeout {self.request_timeout:g})"
            )
            return self._dump_then_kill(role, w, Verdict.SLOW, reason, now)
        if running >= self.request_timeout / 2 and not w.warned:
            w.warned = True
            reason = (
                f"one request has run for {running:.1f} s; it is killed at "
                f"--request-timeout {self.request_timeout:g} s"
            )
            return [Action(Act.WARN_SLOW, role, reason, verdict=Verdict.SLOW)]
        return []

    def _dump_then_kill(
        self, role: Role, w: _Worker, verdict: Verdict, reason: str, now: float
    ) -> list[Action]:
        w.pending = (verdict, now + self.dump_grace, reason)
        return [Action(Act.DUMP, role, reason, verdict=verdict)]

    # -- an exited worker -----------------------------------------------------------------
    def _exited(self, role: Role, w: _Worker, s: Seen, now: float) -> list[Action]:
        code = s.returncode
        assert code is not None
        how = describe_exit(code, self.signal_name(-code) if code < 0 else "")
        if w.killed is not None:
            verdict, reason = w.killed
        else:
            verdict, reason = Verdict.DEAD, how
            if code == -SIGKILL:
                reason += (
                    " (not by the supervisor: perhaps out of memory, since the kernel's OOM "
                    "killer sends SIGKILL, or a kill -9)"
                )
            elif code == EXIT_CORRUPT:
                reason += " (it found the segment corrupt)"
        if code == EXIT_CORRUPT:
            self.corrupt_deaths[role] = self.corrupt_deaths.get(role, 0) + 1
        else:
            self.corrupt_deaths[role] = 0
        if self.corrupt_deaths[role] >= 2:
            self.corrupt_deaths[role] = 0
            self.delay[role] = 0.0
            return [Action(Act.REINIT, role, reason, verdict=verdict)]
        progressed = s.progress != w.progress_at_start or now - w.started_at >= self.stable
        if progressed:
            delay = 0.0
            self.delay[role] = 0.0
        else:
            last = self.delay.get(role, 0.0)
            delay = min(self.most, last * 2) if last else self.first
            self.delay[role] = delay
        return [Action(Act.RESTART, role, reason, delay=delay, verdict=verdict)]
