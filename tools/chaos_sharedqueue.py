"""Chaos for SharedQueue: writers and readers killed at random and inside the lock.

    python -m tools.chaos_sharedqueue                      # 6 writers, 3 readers, 100 kills
    python -m tools.chaos_sharedqueue --kills 300 --capacity 4096

It starts ``--writers`` writer and ``--readers`` reader programs
(``tools.sq_workers``, each a program of its own) on one queue of a random
key, and then, until ``--kills`` of them have died, ``SIGKILL``s a random one
every 20-150 ms, or restarts one with a crash point armed
(``STCP_CRASH_AT=push.copied:37``: it kills itself there, holding the lock),
half and half, the points in turn; it goes on until every point was hit.  Every dead one is started again at once, as a new
incarnation.  Then it stops the writers, lets the readers drain the queue,
and checks the logs (``verify``):

* nothing torn: every code read has its CRC;
* exactly once: no code read twice; every code whose push returned True
  (the writer's log) read, except at most one per reader death (a reader
  killed after its pop took a code, before it logged it);
* a code that was not logged was pushed by a writer killed right after
  its push (at most a batch, right after the last logged one); a writer
  killed at a crash point before publishing never has its code read, and
  one killed after publishing always does;
* each reader saw each writer's codes in order;
* the queue's counters (pushed, popped: repaired after every death
  inside the lock) agree with what was read;
* nobody waited a second or more for a lock.

Exit status 1 when a check fails (the logs are then kept for a
post-mortem, with ``ends.json``: how each incarnation ended).  Every run
is bounded in time.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from server import SharedQueue
from server.ipc.crashpoints import CRASH_ENV
from server.ipc.sharedqueue import CRASH_POINTS
from tools.sq_workers import MAX_BATCH, READ, SEQ

PUSH_POINTS = [p for p in CRASH_POINTS if p.startswith("push.")]
POP_POINTS = [p for p in CRASH_POINTS if p.startswith("pop.")]
UNPUBLISHED = {"push.locked", "push.copying", "push.copied", "push.counted"}
# push.unlocking is also passed by a push that found no room and published nothing
PUBLISHED = {"push.published"}
LOSING = {"killed", "pop.published", "pop.unlocking"}  # a reader's deaths that may lose a code
ARMED_PATIENCE = 10.0  # an armed worker that never reaches its point is killed after this
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Worker:
    role: str  # "writer" or "reader"
    ident: int
    inc: int = -1
    proc: subprocess.Popen[bytes] | None = None
    armed: str = ""
    started: float = 0.0
    # (incarnation, how it ended: "clean", "killed", or the crash point)
    ends: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class Chaos:
    key: int
    folder: str
    capacity: int
    rng: random.Random
    workers: list[Worker]
    deaths: collections.Counter[str] = field(default_factory=collections.Counter)
    turns: collections.Counter[str] = field(default_factory=collections.Counter)

    def points_missed(self) -> list[str]:
        return [p for p in CRASH_POINTS if not self.deaths[p]]

    def at_points(self) -> int:
        return sum(n for how, n in self.deaths.items() if "." in how)

    def start(self, w: Worker, point: str = "") -> None:
        w.inc += 1
        w.armed = point
        env = dict(os.environ)
        env.pop(CRASH_ENV, None)
        if point:
            env[CRASH_ENV] = f"{point}:{self.rng.randint(1, 60)}"
        cmd = [sys.executable, "-m", "tools.sq_workers", w.role, "--key", hex(self.key)]
        cmd += ["--id", str(w.ident), "--inc", str(w.inc), "--dir", self.folder]
        cmd += ["--capacity", str(self.capacity)]
        w.proc = subprocess.Popen(cmd, cwd=REPO, env=env)
        w.started = time.monotonic()

    def reap(self, w: Worker, how: str) -> None:
        assert w.proc is not None
        rc = w.proc.wait(10)
        if rc not in (0, -signal.SIGKILL):
            raise AssertionError(f"{w.role} {w.ident}.{w.inc} exited with status {rc}")
        w.ends.append((w.inc, how if rc else "clean"))
        if rc:
            self.deaths[how] += 1

    @property
    def dead(self) -> int:
        return sum(self.deaths.values())


def run(
    kills: int = 100,
    writers: int = 6,
    readers: int = 3,
    capacity: int = 1 << 16,
    seed: int | None = None,
    limit: float = 300.0,
    folder: str | None = None,
) -> dict[str, Any]:
    """Run the chaos and verify it: the report (``report["ok"]``)."""
    rng = random.Random(seed)
    key = rng.randint(0x1000_0000, 0x7FFF_FFFF)
    folder = folder or tempfile.mkdtemp(prefix="stcp-sq-chaos-")
    pool = [Worker("writer", i) for i in range(writers)] + [
        Worker("reader", i) for i in range(readers)
    ]
    chaos = Chaos(key, folder, capacity, rng, pool)
    observer = SharedQueue.open(key, capacity)
    deadline = time.monotonic() + limit
    started = time.monotonic()
    try:
        for w in pool:
            chaos.start(w)
        next_kill = time.monotonic() + rng.uniform(0.02, 0.15)
        # until enough deaths, every point hit, and half of the deaths at a point (an
        # armed worker killed at the end, or after ARMED_PATIENCE, does not count as one)
        while chaos.dead < kills or chaos.points_missed() or chaos.at_points() < kills // 2:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {chaos.dead} of {kills} kills in {limit} s")
            time.sleep(0.005)
            for w in pool:
                assert w.proc is not None
                if w.proc.poll() is not None:  # an armed one died at its point
                    chaos.reap(w, w.armed or "exited")
                    chaos.start(w, _arm(chaos, kills, w))
                elif w.armed and time.monotonic() - w.started > ARMED_PATIENCE:
                    w.proc.kill()
                    chaos.reap(w, "killed")
                    chaos.start(w)
            if time.monotonic() >= next_kill:
                next_kill = time.monotonic() + rng.uniform(0.02, 0.15)
                victims = [w for w in pool if not w.armed]
                if victims:
                    w = rng.choice(victims)
                    assert w.proc is not None
                    w.proc.kill()
                    chaos.reap(w, "killed")
                    chaos.start(w, _arm(chaos, kills, w))
        for w in pool:  # the last armed ones: no more deaths
            assert w.proc is not None
            if w.armed:
                w.proc.kill()
                chaos.reap(w, "killed")
                chaos.start(w)
        _stop(chaos, observer, deadline)
        report = verify(folder, pool, chaos.deaths, observer.stats())
    finally:
        for w in pool:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait()
        observer.close()
        SharedQueue.remove(key)
    report["seconds"] = round(time.monotonic() - started, 1)
    report["folder"] = folder
    return report


def _arm(chaos: Chaos, kills: int, w: Worker) -> str:
    """A crash point for the next incarnation, while fewer than half of
    the deaths so far were at one, or one of its role's was never hit:
    its role's points in turn, so a short run hits every one."""
    at_points = chaos.at_points()
    armed = [x.armed for x in chaos.workers if x.armed]
    points = PUSH_POINTS if w.role == "writer" else POP_POINTS
    todo = [p for p in points if not chaos.deaths[p] and p not in armed]
    if todo:
        return todo[0]
    if at_points + len(armed) >= kills // 2:
        return ""
    cycle = chaos.turns[w.role] = chaos.turns[w.role] + 1
    return points[cycle % len(points)]


def _stop(chaos: Chaos, observer: SharedQueue, deadline: float) -> None:
    def wait_for(what: str, done: Any) -> None:
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.02)

    writers = [w for w in chaos.workers if w.role == "writer"]
    readers = [w for w in chaos.workers if w.role == "reader"]
    open(os.path.join(chaos.folder, "writers.stop"), "w").close()
    wait_for(
        "the writers to stop", lambda: all(w.proc and w.proc.poll() is not None for w in writers)
    )
    for w in writers:
        chaos.reap(w, "stopped")
    wait_for("the readers to drain the queue", lambda: observer.stats()["used_bytes"] == 0)
    open(os.path.join(chaos.folder, "readers.stop"), "w").close()
    wait_for(
        "the readers to stop", lambda: all(w.proc and w.proc.poll() is not None for w in readers)
    )
    for w in readers:
        chaos.reap(w, "stopped")


def _records(path: str, record: Any) -> list[Any]:
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except FileNotFoundError:  # killed before it made its log
        return []
    whole = len(blob) - len(blob) % record.size  # a writer killed mid-write: not possible
    return [record.unpack_from(blob, i) for i in range(0, whole, record.size)]


def verify(
    folder: str,
    workers: list[Worker],
    deaths: collections.Counter[str],
    counts: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Check the logs (and, given the queue's ``stats()`` after the readers
    drained it, its code counters): the report."""
    problems: list[str] = []
    notes: list[str] = []
    with open(os.path.join(folder, "ends.json"), "w") as f:  # for a post-mortem
        json.dump({f"{w.role}{w.ident}": w.ends for w in workers}, f)
    if os.path.exists(os.path.join(folder, "torn")):
        with open(os.path.join(folder, "torn")) as f:
            problems.append(f.read().strip())
    seen: collections.Counter[tuple[int, int, int]] = collections.Counter()
    for path in glob.glob(os.path.join(folder, "r*.log")):
        last: dict[tuple[int, int], int] = {}
        for w, inc, seq in _records(path, READ):
            seen[(w, inc, seq)] += 1
            if last.get((w, inc), -1) >= seq:
                problems.append(f"{os.path.basename(path)}: writer {w}.{inc}'s {seq} out of order")
            last[(w, inc)] = seq
    twice = [code for code, n in seen.items() if n > 1]
    if twice:
        problems.append(f"{len(twice)} codes read more than once, e.g. {twice[:3]}")
    ends = {(w.ident, inc): how for w in workers if w.role == "writer" for inc, how in w.ends}
    missing = 0
    unlogged = 0
    for (ident, inc), how in ends.items():
        logged = [s for (s,) in _records(os.path.join(folder, f"w{ident}.{inc}.log"), SEQ)]
        if logged != list(range(len(logged))):
            problems.append(f"writer {ident}.{inc}'s log is not 0, 1, 2, ...")
        m = len(logged)
        lost = [s for s in logged if (ident, inc, s) not in seen]
        if lost:
            notes.append(f"writer {ident}.{inc} ({how}): logged {lost} never read")
        missing += len(lost)
        extra = sorted(s for (w, i, s) in seen if (w, i) == (ident, inc) and s >= m)
        unlogged += len(extra)
        if how in UNPUBLISHED or how == "clean":
            if extra:
                problems.append(f"writer {ident}.{inc} ({how}): codes {extra} read, never pushed")
        elif how in PUBLISHED:
            if not extra:
                missing += 1  # published, then taken by a reader that died: counted below
                notes.append(f"writer {ident}.{inc} ({how}): its published {m} never read")
            elif extra != [m]:
                problems.append(f"writer {ident}.{inc} died at {how}: read {extra}, not [{m}]")
        elif how == "push.unlocking" and extra not in ([], [m]):
            problems.append(f"writer {ident}.{inc} died at {how}: read {extra}, not [] or [{m}]")
        elif extra != list(range(m, m + len(extra))) or len(extra) > MAX_BATCH:
            problems.append(f"writer {ident}.{inc} ({how}): codes {extra} read, never pushed")
    reader_deaths = sum(  # the deaths that may lose the code just taken
        1 for w in workers if w.role == "reader" for _inc, how in w.ends if how in LOSING
    )
    if missing > reader_deaths:
        problems.append(
            f"{missing} pushed codes never read, with only {reader_deaths} reader deaths"
        )
    read = sum(seen.values())
    if counts is not None:  # the counters repaired after every death are exact
        pushed, popped = counts["pushed"], counts["popped"]
        if pushed != popped or not read + missing <= pushed <= read + reader_deaths:
            problems.append(
                f"the queue counted {pushed} pushed and {popped} popped; {read} were read and "
                f"{missing} lost, with {reader_deaths} reader deaths"
            )
    waits = []
    for path in glob.glob(os.path.join(folder, "*.wait")):
        with open(path) as f:
            waits.append(float(f.read()))
    longest = max(waits, default=0.0)
    if longest >= 1.0:
        problems.append(f"a process waited {longest:.3f} s for a lock")
    return {
        "ok": not problems,
        "problems": problems,
        "notes": notes,
        "deaths": dict(deaths),
        "codes_read": read,
        "counted": None if counts is None else (counts["pushed"], counts["popped"]),
        "lost_to_reader_deaths": missing,
        "pushed_not_logged": unlogged,
        "longest_lock_wait_s": longest,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__[__doc__.index("It starts") :],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--kills", type=int, default=100, help="deaths in all (default 100)")
    parser.add_argument("--writers", type=int, default=6)
    parser.add_argument("--readers", type=int, default=3)
    parser.add_argument(
        "--capacity", type=int, default=1 << 16, help="queue bytes (default 64 KiB)"
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--limit", type=float, default=600.0, help="seconds the run may take")
    a = parser.parse_args(argv)
    report = run(a.kills, a.writers, a.readers, a.capacity, a.seed, a.limit)
    for name, value in report.items():
        if name != "problems":
            print(f"{name:>24}: {value}")
    for problem in report["problems"]:
        print(f"PROBLEM: {problem}")
    if report["ok"]:
        shutil.rmtree(report["folder"], ignore_errors=True)  # kept only for a post-mortem
        print("ok (its logs removed)")
    else:
        print(f"FAILED: the logs are kept in {report['folder']}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
