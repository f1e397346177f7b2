"""Step 06: the same mechanism, as classes of the package.

**What it adds.**  Steps 03 to 05 wrote offsets by hand and trusted whatever
the segment held.  From here on the steps use the package's classes, the
Python faces of the original design:

* ``SHMFactory.create_product(key, size)`` (``server/ipc/shm.py``): step 05's
  create-or-attach, plus the checks it left out (size, owner, mode 0600)
  and a *header* at the start of the segment: a magic number, a layout
  version and a directory of every object placed, each entry marked DONE
  once that object finished initialising (step 07 shows why).
* ``SharedMemory.place(name, kind, size)``: the allocator.  In the C++
  original ``operator new`` was overloaded to hand out the next free bytes
  of the segment; here ``place`` hands out the next region as a
  ``memoryview`` and records it in the directory, so nobody computes
  offsets by hand any more.
* ``CodeQueue`` (``server/ipc/codequeue.py``): step 04's ring placed in the
  segment, plus a *doorbell*: a consumer with nothing to do sleeps in the
  kernel instead of looking every millisecond, and the producer wakes it.
* *Messages*: ``server/core/codes.py`` encodes a code as a kind (OPENED, MESSAGE,
  CLOSED, SEND, ...), a connection id and a body, and decodes and checks it
  on the way out (the original's Message and MessageQueue).

**Run it.**  ``python -m steps.step06_classes``.

**What to watch.**  The directory the allocator wrote; a logic process that
waits a whole second using almost no CPU; three messages and their replies.
Then two kinds of damage: junk in the header makes the factory re-initialise
the segment (with a warning saying why) instead of reading garbage as queue
counters, and an impossible counter in a queue gives a clear error.

**Read next.**  ``server/ipc/shm.py`` and ``server/ipc/codequeue.py``; step 07 shows
how the classes tell a first start from a recovery.
"""

from __future__ import annotations

import logging
import struct
import sys
import time
from collections.abc import Callable

import sysv_ipc

from server import CodeQueue, CorruptSegment, SharedMemory, SHMFactory
from server.core.codes import Code, Kind, decode, encode
from server.ipc.segment import layout_of, segment_size
from steps._kit import (
    DemoError,
    Stage,
    child_run,
    cpu_seconds,
    parent_alive,
    roles_parser,
    run,
    say,
)

CAPACITY = 64 * 1024
LAYOUT = layout_of([("inbound", CodeQueue, CAPACITY), ("outbound", CodeQueue, CAPACITY)])
SIZE = segment_size(LAYOUT)


def place_queues(shm: SharedMemory) -> tuple[CodeQueue, CodeQueue]:
    """Inbound (connect -> logic) and outbound (logic -> connect), in this order."""
    return CodeQueue(shm, CAPACITY, "inbound"), CodeQueue(shm, CAPACITY, "outbound")


def answer(inbound: CodeQueue, outbound: CodeQueue, each: Callable[[Code], None]) -> None:
    """The logic loop: sleep until a MESSAGE comes, answer it with a SEND."""
    inbound.recover_consumer()  # we take these roles in a fresh process
    outbound.recover_producer()
    while parent_alive():
        if not inbound.wait(timeout=1.0):
            continue
        code = inbound.pop()
        assert code is not None  # we are the only consumer
        message = decode(code)
        reply = encode(Kind.SEND, message.conn, b"done: " + message.body)
        while not outbound.push(reply):
            time.sleep(0.001)  # the connect process will make room
        each(message)


def run_logic(key: int) -> None:
    shm = SHMFactory.attach(key)
    inbound, outbound = place_queues(shm)
    say(f"attached in mode {shm.start_mode.name} (a joining process checks, never formats)")
    say("sleeping on the inbound doorbell")
    answer(inbound, outbound, lambda message: None)


def take_replies(outbound: CodeQueue, count: int) -> list[Code]:
    replies: list[Code] = []
    while len(replies) < count and outbound.wait(timeout=10):
        replies += [decode(code) for code in outbound.pop_many()]
    return replies


def show_directory(shm: SharedMemory) -> None:
    for p in shm.placements():
        say(f"     {p.name:<9} {p.kind:<10} offset {p.offset:>6}  {p.size:>6} bytes")


def damage(key: int, offset: int, junk: bytes) -> None:
    seg = sysv_ipc.SharedMemory(key)
    seg.write(junk, offset)
    seg.detach()


def main(argv: list[str]) -> int:
    parser, _roles = roles_parser("python -m steps.step06_classes", "logic")
    args = parser.parse_args(argv)
    if args.role == "logic":
        return child_run(run_logic, args.key)

    # The factory logs why it re-initialises a segment: show it in the story.
    logging.basicConfig(level=logging.WARNING, format="     log: %(message)s", stream=sys.stdout)
    with Stage() as stage:
        key = stage.new_key()
        shm = SHMFactory.create_product(key, SIZE, LAYOUT)
        inbound, outbound = place_queues(shm)
        say(
            f"1. SHMFactory made segment 0x{key:08x} ({SIZE} bytes, start mode "
            f"{shm.start_mode.name}); the allocator placed two CodeQueues after the header:"
        )
        show_directory(shm)

        logic = stage.start("logic", "steps.step06_classes", "logic", "--key", hex(key))
        logic.expect("sleeping on the inbound doorbell")
        before = cpu_seconds(logic.pid)
        time.sleep(1.0)
        used = cpu_seconds(logic.pid) - before
        verdict = "under 0.05 s" if used < 0.05 else f"{used:.2f} s (a busy machine?)"
        say(f"2. The logic process waited 1 s for work and used {verdict} of CPU: no polling.")

        say("3. Push three MESSAGE codes for connections 1, 2 and 3; the replies:")
        for conn, text in ((1, b"one"), (2, b"two"), (3, b"three")):
            inbound.push(encode(Kind.MESSAGE, conn, text))
        for reply in take_replies(outbound, 3):
            say(f"     {reply.kind.name} to connection {reply.conn}: {reply.body!r}")
        logic.signal(15)
        logic.finish()
        shm.detach()

        say("4. Write junk over the header's magic number, then start the factory again:")
        damage(key, 0, b"garbage!")
        shm = SHMFactory.create_product(key, SIZE, LAYOUT)
        say(f"   start mode {shm.start_mode.name}: re-made, not trusted.")
        inbound, outbound = place_queues(shm)
        tail = next(p.offset for p in shm.placements() if p.name == "inbound") + 64
        shm.detach()

        say("5. Write an impossible tail counter into the inbound queue, then attach:")
        damage(key, tail, struct.pack("<Q", 1 << 62))
        shm = SHMFactory.attach(key)
        try:
            place_queues(shm)
        except CorruptSegment as err:
            say(f"   {type(err).__name__}: {err}")
        else:
            raise DemoError("the damaged queue was accepted")
        finally:
            shm.detach()
    say(f"6. Done: segment 0x{key:08x} is removed.")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
