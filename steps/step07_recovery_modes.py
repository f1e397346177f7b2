"""Step 07: INIT or RECOVER, decided once by the factory, obeyed by every object.

**What it adds.**  In step 05 the worker carried an ``is_new`` flag by hand to
every ring it built.  Now the factory makes the decision once and records it:
``shm.start_mode`` is ``StartMode.INIT`` (a new segment) or
``StartMode.RECOVER`` (an earlier run left one), and every object is placed
in a ``with shm.placing(name, kind, size) as (region, mode)`` block that
tells it what to do:

* INIT: initialise the region (a new queue is formatted, a counter is 0);
* RECOVER: skip the initialisation, keep what is there and *check* it
  (shared memory is untrusted input).

``Progress`` below is an object of our own, built that way in a dozen
lines: anything that lives in bytes can be placed.

The end of the ``with`` block is the object's *init-complete record*: the
allocator marks its directory entry DONE, the last write of its INIT.
Nothing else needs calling, ever.  A process killed in the middle of one
object's INIT leaves that entry not DONE, and the next start initialises
that object again, and only it: the queues placed before it keep their
codes.  The header also counts a ``generation`` that grows at every start.

**Run it.**  ``python -m steps.step07_recovery_modes``.

**What to watch.**  Worker #1 starts in INIT (generation 1) and every object
initialises; it handles three of eight requests and is killed with
``SIGKILL``.  Worker #2 starts in RECOVER (generation 2): every object skips
its init, the five pending codes and the count of three are found, and the
rest is handled.  Last, worker #3 is killed in the middle of ``Progress``'s
INIT, after both queues were placed; two codes are pushed into them; worker
#4 initialises ``Progress`` again (the log says why) and keeps both queues,
so the two codes are answered.

**Read next.**  ``server/core/header.py`` (the header), ``server/ipc/segment.py``
(what the real server places) and ``server/core/journal.py`` (how the logic
process survives a kill at *any* instant, not only between requests).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time

from server import CorruptSegment, SharedMemory, SHMFactory, StartMode
from server.core.codes import Code, Kind, encode
from server.ipc.segment import segment_size
from steps._kit import DemoError, Stage, child_run, exit_text, parent_alive, roles_parser, run, say
from steps.step06_classes import LAYOUT, answer, place_queues, take_replies

PROGRESS_SIZE = 64
LAYOUT7 = [*LAYOUT, ("progress", "Progress", PROGRESS_SIZE)]
SIZE = segment_size(LAYOUT7)
REQUESTS = 8


class Progress:
    """How many requests were handled, over every life of the worker.

    Layout: u64 ``handled`` at byte 0 (written only by the worker); the rest
    is reserved.  INIT sets it to 0; RECOVER keeps it after a range check."""

    def __init__(self, shm: SharedMemory, *, die_in_init: bool = False) -> None:
        with shm.placing("progress", "Progress", PROGRESS_SIZE) as (region, mode):
            self._words = region.cast("Q")
            shm.on_detach(self._words.release)
            if mode is StartMode.INIT:
                if die_in_init:
                    say("killing myself (SIGKILL) in the middle of Progress's INIT")
                    os.kill(os.getpid(), signal.SIGKILL)
                self._words[0] = 0
            elif self._words[0] > 1 << 48:
                raise CorruptSegment(
                    f"progress counter {self._words[0]} is impossible",
                    field="handled",
                    found=self._words[0],
                    expected="< 2**48",
                )
        # Here the block has ended: in INIT, "progress" is now recorded DONE.

    @property
    def handled(self) -> int:
        return int(self._words[0])

    def bump(self) -> None:
        self._words[0] += 1


def run_worker(key: int, stop_after: int, die_in_init: bool) -> None:
    logging.basicConfig(level=logging.WARNING, format="log: %(message)s", stream=sys.stdout)
    shm = SHMFactory.create_product(key, SIZE, LAYOUT7)
    say(f"start mode {shm.start_mode.name} (generation {shm.generation})")
    inbound, outbound = place_queues(shm)
    progress = Progress(shm, die_in_init=die_in_init)
    for p in shm.placements():
        what = (
            "initialised" if shm.modes[p.name] is StartMode.INIT else "init skipped, kept as found"
        )
        say(f"  {p.name:<9} {p.kind:<10} {what}")
    say(f"{len(inbound)} pending code(s) found; {progress.handled} handled before")
    handled_now = 0

    def each(message: Code) -> None:
        nonlocal handled_now
        progress.bump()
        handled_now += 1
        say(f"handled {message.body.decode()} (total {progress.handled})")
        if handled_now == stop_after:
            say("stuck (pretending to hang, waiting to be killed)")
            while parent_alive():
                time.sleep(0.1)

    answer(inbound, outbound, each)


def main(argv: list[str]) -> int:
    parser, roles = roles_parser("python -m steps.step07_recovery_modes", "worker")
    roles["worker"].add_argument("--stop-after", type=int, default=0)
    roles["worker"].add_argument("--die-in-init", action="store_true")
    args = parser.parse_args(argv)
    if args.role == "worker":
        return child_run(run_worker, args.key, args.stop_after, args.die_in_init)

    module = "steps.step07_recovery_modes"
    with Stage() as stage:
        key = stage.new_key()
        say(f"1. Start worker #1 with key 0x{key:08x}; no segment exists yet.")
        first = stage.start("worker #1", module, "worker", "--key", hex(key), "--stop-after", "3")
        first.expect("pending code")
        shm = SHMFactory.attach(key)
        inbound, outbound = place_queues(shm)
        say(f"2. Push {REQUESTS} MESSAGE codes (we play the connect process).")
        for i in range(1, REQUESTS + 1):
            inbound.push(encode(Kind.MESSAGE, i, b"request %d" % i))
        first.expect("stuck")
        before = take_replies(outbound, 3)
        say(
            f"3. {len(before)} replies came back, {len(inbound)} codes still wait. "
            f"kill -9 worker #1 (pid {first.pid}):",
            f"   worker #1 {exit_text(first.kill())}.",
        )
        say("4. Start worker #2 with the same key.")
        second = stage.start("worker #2", module, "worker", "--key", hex(key))
        second.expect(f"handled request {REQUESTS} ")
        after = take_replies(outbound, REQUESTS - len(before))
        bodies = [r.body for r in before + after]
        if bodies != [b"done: request %d" % i for i in range(1, REQUESTS + 1)]:
            raise DemoError(f"the replies are not one per request, in order: {bodies!r}")
        say(f"   All {REQUESTS} requests answered once, in order, across two lives of the worker.")
        second.signal(15)
        second.finish()
        shm.detach()

        key2 = stage.new_key()
        say(f"5. Start worker #3 on a new segment 0x{key2:08x}; it dies inside Progress's INIT:")
        third = stage.start("worker #3", module, "worker", "--key", hex(key2), "--die-in-init")
        say(f"   worker #3 {exit_text(third.finish())}.  The directory it left:")
        shm = SHMFactory.attach(key2)
        for p in shm.placements():
            say(f"     {p.name:<9} {p.kind:<10} {'DONE' if p.done else 'INIT never finished'}")
        inbound, _outbound = place_queues(shm)  # both DONE: usable already
        for i in (1, 2):
            inbound.push(encode(Kind.MESSAGE, i, b"late %d" % i))
        say("   Push 2 MESSAGE codes into its inbound queue, detach, start worker #4:")
        shm.detach()  # an owner re-initialises an object only when it is alone
        fourth = stage.start("worker #4", module, "worker", "--key", hex(key2))
        fourth.expect("handled late 2 ")
        fourth.signal(15)
        fourth.finish()
    say("6. Done: every worker is stopped and both segments are removed.")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
