"""The watchdog's verdicts and restart decisions, with a fake clock (no sleeps)."""

from __future__ import annotations

import pytest

from server.core.status import Role
from server.core.watchdog import EXIT_CORRUPT, Act, Seen, Verdict, Watchdog

L = Role.LOGIC


def dog(**options: float) -> Watchdog:
    d = Watchdog(hang_timeout=5.0, request_timeout=30.0, **options)  # type: ignore[arg-type]
    d.started(L, now=0.0)
    return d


def acts(d: Watchdog, now: float, **seen: object) -> list[tuple[Act, Verdict | None]]:
    return [(a.act, a.verdict) for a in d.check(now, {L: Seen(**seen)})]  # type: ignore[arg-type]


def test_a_moving_heartbeat_is_never_hung() -> None:
    d = dog()
    for t in range(100):
        assert acts(d, t * 1.0, heartbeat=t) == []


def test_a_still_heartbeat_is_hung_after_the_timeout_then_dumped_then_killed() -> None:
    d = dog()
    assert acts(d, 0.0, heartbeat=7) == []
    assert acts(d, 4.9, heartbeat=7) == []
    assert acts(d, 5.0, heartbeat=7) == [(Act.DUMP, Verdict.HUNG)]
    assert acts(d, 5.1, heartbeat=7) == []  # its stack is being written
    assert acts(d, 5.25, heartbeat=7) == [(Act.KILL, Verdict.HUNG)]
    assert acts(d, 6.0, heartbeat=7) == []  # killed once; its exit comes next
    [restart] = d.check(6.1, {L: Seen(returncode=-9, heartbeat=7)})
    assert restart.act is Act.RESTART and restart.verdict is Verdict.HUNG
    assert "no heartbeat for 5.0 s" in restart.reason and "OOM" not in restart.reason


def test_a_stopped_process_cannot_dump_and_is_killed_at_once() -> None:
    d = dog()
    acts(d, 0.0, heartbeat=1, frozen=True)
    [kill] = d.check(5.0, {L: Seen(heartbeat=1, frozen=True)})
    assert kill.act is Act.KILL and "stopped (SIGSTOP?)" in kill.reason


def test_one_slow_request_warns_at_half_and_is_killed_at_the_timeout() -> None:
    d = dog()
    beat = iter(range(1000))
    assert acts(d, 0.0, heartbeat=next(beat), requests=10, busy=True) == []
    assert acts(d, 14.9, heartbeat=next(beat), requests=10, busy=True) == []
    assert acts(d, 15.0, heartbeat=next(beat), requests=10, busy=True) == [
        (Act.WARN_SLOW, Verdict.SLOW)
    ]
    assert acts(d, 20.0, heartbeat=next(beat), requests=10, busy=True) == []  # warned once
    assert acts(d, 30.0, heartbeat=next(beat), requests=10, busy=True) == [(Act.DUMP, Verdict.SLOW)]
    assert acts(d, 30.3, heartbeat=next(beat), requests=10, busy=True) == [(Act.KILL, Verdict.SLOW)]


def test_many_quick_requests_are_not_one_slow_one() -> None:
    d = dog()
    for t in range(200):  # busy all the time, but each request is new
        assert acts(d, t * 1.0, heartbeat=t, requests=t, busy=True) == []


def test_an_idle_worker_is_not_slow() -> None:
    d = dog()
    for t in range(100):
        assert acts(d, t * 1.0, heartbeat=t, requests=5, busy=False) == []


def test_the_slow_clock_restarts_with_each_request() -> None:
    d = dog()
    acts(d, 0.0, heartbeat=0, requests=1, busy=True)
    acts(d, 20.0, heartbeat=1, requests=1, busy=True)  # warned
    assert acts(d, 25.0, heartbeat=2, requests=2, busy=True) == []  # the next request
    assert acts(d, 54.0, heartbeat=3, requests=2, busy=True) == [(Act.WARN_SLOW, Verdict.SLOW)]


def restart_delay(d: Watchdog, now: float, **seen: object) -> float:
    [a] = d.check(now, {L: Seen(**seen)})  # type: ignore[arg-type]
    assert a.act is Act.RESTART
    return a.delay


def test_a_worker_that_made_progress_is_restarted_at_once_every_time() -> None:
    d = dog()
    delays = []
    now = 0.0
    for i in range(20):
        d.started(L, now, progress=i * 10)
        now += 0.3
        delays.append(restart_delay(d, now, returncode=-9, progress=i * 10 + 3))
    assert delays == [0.0] * 20


def test_a_crash_loop_without_progress_backs_off_then_recovers() -> None:
    d = dog()
    delays = []
    now = 0.0
    for _ in range(8):
        d.started(L, now, progress=42)
        now += 0.05
        delays.append(restart_delay(d, now, returncode=1, progress=42))
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    d.started(L, now, progress=42)
    assert restart_delay(d, now + 3.0, returncode=1, progress=42) == 0.0  # it lived 3 s


def test_a_sigkill_nobody_sent_may_be_the_oom_killer() -> None:
    d = Watchdog(5.0, 30.0, signal_name=lambda n: "SIGKILL" if n == 9 else "")
    d.started(L, 0.0)
    [a] = d.check(1.0, {L: Seen(returncode=-9)})
    assert a.verdict is Verdict.DEAD
    assert a.reason.startswith("killed by SIGKILL") and "out of memory" in a.reason


def test_corruption_twice_in_a_row_asks_for_a_reinit() -> None:
    d = dog()
    [first] = d.check(1.0, {L: Seen(returncode=EXIT_CORRUPT)})
    assert first.act is Act.RESTART and "corrupt" in first.reason
    d.started(L, 1.0)
    [second] = d.check(2.0, {L: Seen(returncode=EXIT_CORRUPT)})
    assert second.act is Act.REINIT
    d.started(L, 2.0)
    [third] = d.check(3.0, {L: Seen(returncode=EXIT_CORRUPT)})
    assert third.act is Act.RESTART  # counting starts again after the reinit


@pytest.mark.parametrize("code", [0, 1, -15])
def test_other_exits_are_said_as_they_are(code: int) -> None:
    d = dog()
    [a] = d.check(1.0, {L: Seen(returncode=code)})
    assert a.verdict is Verdict.DEAD
    assert a.reason == (f"exited with status {code}" if code >= 0 else "killed by signal 15")


def test_a_forgotten_worker_is_not_watched() -> None:
    d = dog()
    d.forget(L)
    assert d.check(100.0, {L: Seen(heartbeat=0)}) == []
