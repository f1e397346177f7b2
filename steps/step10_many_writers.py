"""Step 10: one queue for many unrelated processes, and a lock that survives its holder.

**What it adds.**  Until now a queue had one writer and one reader, a
parent and its child.  ``SharedQueue`` is for any number of processes
that know nothing of each other but a key: each one calls
``SharedQueue.open(key)``, and the first creates the queue (its segment and
two locks) while the others attach.  There is no manager process to start
first.  Writers take a *push lock* around their record, readers a *pop
lock* around theirs.

The hard part is a process killed while it holds a lock.  C has a
*robust mutex* for this (``pthread_mutex`` with ``PTHREAD_MUTEX_ROBUST``):
the next process to lock it gets ``EOWNERDEAD`` and must call
``pthread_mutex_consistent`` after repairing the data.  Python cannot put
one in shared memory.  System V has another answer: a semaphore taken with
``SEM_UNDO``.  The kernel remembers every process's ``-1`` and undoes it
when that process exits, for any reason, ``SIGKILL`` included, so the lock
comes back at once.  What the kernel does not say is that anything
happened.  So the holder writes its pid into the queue's control block
right after taking the lock and clears it right before giving it back: the
next holder that finds a pid there knows its predecessor died inside,
repairs the counters it left half updated, and wakes every sleeper.  A
record the dead one was copying was never *published* (the tail moves
last), so nobody ever reads half of it.

**Run it.**  ``python -m steps.step10_many_writers``.

**What to watch.**  Three writers, each a program started on its own,
share the queue.  Writer A creates it.  Writer B is started with a *crash
point* (``STCP_CRASH_AT=push.copied:2``): while pushing its second line it
kills itself with ``SIGKILL`` holding the push lock, its bytes copied but
not published.  The driver shows the lock free again and B's pid still in
the holder word.  Writer C takes the lock, says whose death it repaired,
and pushes its lines.  A reader then takes everything: every line of A, B's
first, C's, and never B's second.

**Read next.**  ``server/core/sharedring.py`` (the control block, the lock
rule, the sleep rule), ``server/ipc/semlock.py`` (the lock) and
``tools/chaos_sharedqueue.py`` (100 kills, half of them inside the lock).
"""

from __future__ import annotations

import logging
import sys

from server import SharedQueue, SHMFactory
from server.ipc.crashpoints import CRASH_ENV
from server.ipc.semlock import pop_lock_key, remove_lock
from steps._kit import Child, DemoError, Stage, child_run, roles_parser, run, say

MODULE = "steps.step10_many_writers"
CAPACITY = 4096


def run_writer(key: int, name: str, count: int) -> None:
    logging.basicConfig(level=logging.WARNING, format="log: %(message)s", stream=sys.stdout)
    with SharedQueue.open(key, CAPACITY) as q:
        say(f"opened the queue ({len(q)} lines in it)")
        for i in range(1, count + 1):
            line = f"{name}{i}"
            q.push(line.encode())
            say(f"pushed {line}")


def run_reader(key: int) -> None:
    with SharedQueue.open(key, CAPACITY) as q:
        got = []
        while (code := q.pop(timeout=0.5)) is not None:
            got.append(code.decode())
        say(f"popped {len(got)} lines: {' '.join(got)}")
        stats = q.stats()
        say(f"the queue counted {stats['pushed']} pushed, {stats['popped']} popped")


def push_lock_state(key: int) -> str:
    """What the inspector says of the push lock (``python -m server inspect``):
    an observer's view of the segment, which takes no lock."""
    shm = SHMFactory.attach(key)
    try:
        (placed,) = shm.placements()
        view = SharedQueue.place(shm, placed.name, SharedQueue.param_of(placed.size), observer=True)
        return str(view.stats()["push_lock"]["state"])
    finally:
        shm.detach()


def main(argv: list[str]) -> int:
    parser, roles = roles_parser("python -m steps.step10_many_writers", "writer", "reader")
    roles["writer"].add_argument("--name", required=True)
    roles["writer"].add_argument("--count", type=int, default=3)
    args = parser.parse_args(argv)
    if args.role == "writer":
        return child_run(run_writer, args.key, args.name, args.count)
    if args.role == "reader":
        return child_run(run_reader, args.key)

    with Stage() as stage:
        key = stage.new_key()
        try:
            return _demo(stage, key)
        finally:
            for lock_key in (key, pop_lock_key(key)):
                remove_lock(lock_key)


def _demo(stage: Stage, key: int) -> int:
    def writer(name: str, env: dict[str, str] | None = None) -> Child:
        args = ("writer", "--key", hex(key), "--name", name)
        return stage.start(f"writer {name}", MODULE, *args, env=env)

    say(f"1. Writer A, a program of its own, opens queue 0x{key:08x}: nobody made it yet.")
    a = writer("A")
    a.expect("pushed A3")
    a.finish()
    say(f"2. Writer B starts with {CRASH_ENV}=push.copied:2: it dies inside its second push.")
    b = writer("B", {CRASH_ENV: "push.copied:2"})
    b.expect("pushed B1")
    status = b.finish()
    if status != -9:
        raise DemoError(f"writer B should have been killed by SIGKILL, but it ended with {status}")
    say(
        "   writer B was killed by SIGKILL, holding the push lock.  The kernel undid",
        "   its -1 (SEM_UNDO), and the holder word still names it.  The push lock now:",
        f"   {push_lock_state(key)}",
    )
    say("3. Writer C opens the queue and pushes: the first to take the lock repairs.")
    c = writer("C")
    c.expect("pushed C3")
    c.finish()
    say("4. A reader takes everything.")
    reader = stage.start("reader", MODULE, "reader", "--key", hex(key))
    match = reader.expect("popped")
    reader.expect("counted")
    reader.finish()
    lines = match.string.split(": ", 1)[1].split()
    if lines != ["A1", "A2", "A3", "B1", "C1", "C2", "C3"]:
        raise DemoError(f"the reader got {lines}")
    say(
        "   Every line once and in order; B2, copied but never published, never appears.",
        "   Nobody waited for B: the lock came back the moment it died.",
    )
    SharedQueue.remove(key)
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
