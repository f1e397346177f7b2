"""Step 08: a watchdog that reads heartbeats in shared memory.

**What it adds.**  Recovery (step 07) needs someone to notice that a process
is gone or stuck and start a new one.  The seed's answer: the watched
process bumps a *heartbeat sequence number* in shared memory, and a watchdog
reads it now and then; a number that stops moving means a process that
stopped working.  Two details make the difference between a watchdog that
helps and one that kills healthy processes:

1. *Beat from a small thread, not from the work.*  A process busy with one
   long request still beats, because its heartbeat thread runs while the
   request does; only a *frozen* process stops (stopped by SIGSTOP, dead
   locked, stuck in a C call).  A slow request is a different verdict with
   its own, longer limit (``--request-timeout`` in the real server).
2. *A counter, not a timestamp.*  The watchdog notes when it last saw the
   number change, on its own clock; the worker never writes a time.

The decisions are the package's pure ``Watchdog`` (``check(now, seen) ->
actions``): this step only reads the counter, asks, and acts.

The segment (32 bytes, mode 0600)::

    word  field      written by
    ----  ---------  ------------------------------------------
       0  heartbeat  the worker (its thread, or its loop: --naive)
       1  request    the driver: "work this many ms"; 0: idle
       2  done       the worker: requests finished

**Run it.**  ``python -m steps.step08_heartbeat``.

**What to watch.**  Worker #1 takes a 2-second request and keeps beating:
the watchdog leaves it alone.  Then it is frozen with SIGSTOP: its heartbeat
stops, and after the 1-second hang timeout the watchdog kills it and starts
worker #2, which beats again.  Last, the counter-demo: a worker that beats
from its loop takes the same request and is killed as hung although it was
only busy.

**Read next.**  ``server/core/watchdog.py`` (the three verdicts and when to
restart) and ``server/proc/common.py`` (``Heartbeat``, the thread).
"""

from __future__ import annotations

import threading
import time

import sysv_ipc

from server.core.status import Role
from server.core.watchdog import Act, Seen, Watchdog
from server.proc.workers import frozen
from steps._kit import Child, DemoError, Stage, child_run, parent_alive, roles_parser, run, say

SIZE = 32
HANG_TIMEOUT = 1.0
CHECK = 0.1
_HEARTBEAT, _REQUEST, _DONE = range(3)


def run_worker(key: int, naive: bool) -> None:
    seg = sysv_ipc.SharedMemory(key)
    words = memoryview(seg).cast("Q")

    def beat_forever() -> None:
        while True:
            words[_HEARTBEAT] += 1
            time.sleep(CHECK / 2)

    if not naive:
        threading.Thread(target=beat_forever, daemon=True).start()
    say("beating " + ("from my loop only" if naive else "from a thread"))
    while parent_alive():
        if naive:
            words[_HEARTBEAT] += 1
        if words[_REQUEST]:
            say(f"working on a request of {words[_REQUEST] / 1000:g} s")
            time.sleep(words[_REQUEST] / 1000)  # the app at work; no beat from here
            words[_REQUEST] = 0
            words[_DONE] += 1
            say("request done")
        time.sleep(CHECK / 2)


class Watcher:
    """The driver as a watchdog: observe the counter, ask, act."""

    def __init__(self, stage: Stage, key: int) -> None:
        self.stage, self.key = stage, key
        self.seg = sysv_ipc.SharedMemory(key)
        self.words = memoryview(self.seg).cast("Q")
        for i in range(len(self.words)):  # INIT: a new segment is not zeroed (sysv_ipc fills it)
            self.words[i] = 0
        self.dog = Watchdog(HANG_TIMEOUT, request_timeout=60.0, dump_grace=0.0)
        self.number = 0
        self.worker = self.start()  # worker #1

    def start(self, naive: bool = False) -> Child:
        self.number += 1
        args = ["worker", "--key", hex(self.key), *(["--naive"] if naive else [])]
        worker = self.stage.start(f"worker #{self.number}", "steps.step08_heartbeat", *args)
        worker.expect("beating")
        self.dog.started(Role.LOGIC, time.monotonic())
        self.worker = worker
        return worker

    def watch(self, seconds: float, until_done: int | None = None) -> str | None:
        """Check every CHECK s for ``seconds``; the verdict if it acted."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if until_done is not None and self.words[_DONE] >= until_done:
                return None
            w = self.worker
            is_frozen = frozen(w.pid)
            seen = Seen(heartbeat=self.words[_HEARTBEAT], frozen=is_frozen)
            for action in self.dog.check(time.monotonic(), {Role.LOGIC: seen}):
                if action.act in (Act.DUMP, Act.KILL):
                    assert action.verdict is not None
                    say(
                        f"   watchdog: worker #{self.number}'s heartbeat stood still for "
                        f"{HANG_TIMEOUT:g} s: {action.verdict.value}"
                        + (" (and stopped: it cannot even show its stack)." if is_frozen else ".")
                    )
                    say(f"   watchdog: kill -9 worker #{self.number}.")
                    w.kill()
                    return action.verdict.value
            time.sleep(CHECK)
        return None

    def close(self) -> None:
        self.words.release()
        self.seg.detach()


def main(argv: list[str]) -> int:
    parser, roles = roles_parser("python -m steps.step08_heartbeat", "worker")
    roles["worker"].add_argument("--naive", action="store_true")
    args = parser.parse_args(argv)
    if args.role == "worker":
        return child_run(run_worker, args.key, args.naive)

    with Stage() as stage:
        key = stage.new_key()
        sysv_ipc.SharedMemory(key, sysv_ipc.IPC_CREX, mode=0o600, size=SIZE).detach()
        say(f"1. A segment 0x{key:08x} for the heartbeat; worker #1 beats from a thread.")
        w = Watcher(stage, key)
        try:
            say("2. A request of 2 s: the worker is busy, its thread still beats.")
            w.words[_REQUEST] = 2000
            if w.watch(5.0, until_done=1) is not None:
                raise DemoError("the watchdog killed a worker that was only busy")
            w.worker.expect("request done")
            say("   watchdog: heartbeat moving all along; nothing to do.")
            say(f"3. SIGSTOP worker #1 (pid {w.worker.pid}): frozen, as in a deadlock.")
            w.worker.signal(19)
            if w.watch(5.0) != "hung":
                raise DemoError("the watchdog did not notice the frozen worker")
            say("   watchdog: start worker #2.")
            w.start()
            if w.watch(1.5) is not None:
                raise DemoError("the new worker was killed")
            say("   watchdog: worker #2's heartbeat moves; serving again.")
            w.worker.signal(15)
            w.worker.finish()
            say("4. The counter-demo: a worker that beats from its loop, the same request.")
            w.start(naive=True)
            w.words[_REQUEST] = 2000
            w.worker.expect("working on a request")
            if w.watch(5.0, until_done=2) != "hung":
                raise DemoError("the naive worker survived its long request")
            say(
                "   It was only busy, and it was killed: that is why the heartbeat comes",
                "   from a thread, and a slow request has a limit of its own.",
            )
        finally:
            w.close()
    say("5. Done: every worker is stopped and the segment is removed.")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
