"""Step 04: a queue of codes in the segment, one per direction.

**What it adds.**  Step 03's mailbox held one request, so the connect process
kept the rest in its own memory.  Now each direction gets a *ring*: a circular
byte area in the segment where records (*codes*) follow one another, each a
4-byte length and its bytes.  Two counters say where we are: the producer
advances ``tail`` after writing a code, the consumer advances ``head`` after
copying one out.  ``tail - head`` is what is waiting; a code that reaches the
end of the area simply continues at its start (*wrap-around*), so no byte is
wasted and there is no "move everything to the front".

The rules of step 03 still hold, one level up: the producer writes the whole
record and publishes ``tail`` last, the consumer copies the record out and
publishes ``head`` last, and each counter has exactly one writer, so one
producer and one consumer need no lock.  That is why there is one ring per
direction.  The ring is ``server.core.codering.CodeRing`` from the package (a pure
class: here it first runs on a plain ``bytearray``); this step places two of
them in a raw segment by hand::

    offset            size              object
    ----------------  ----------------  -------------------------------
    0                 256 + capacity    inbound ring  (connect -> logic)
    256 + capacity    256 + capacity    outbound ring (logic -> connect)

**Run it.**  ``python -m steps.step04_code_queue``.

**What to watch.**  First a 32-byte ring in plain memory: a code wraps around
its end and still comes out whole.  Then step 03's demo again, with the
rings instead of the mailboxes: the connect process hands every request to
the segment at once and holds back nothing.  The requests now wait in shared
memory, which outlives both processes: step 05 uses that.

**Read next.**  ``server/core/ring.py``: the record format, the counters and the
commit rule; ``server/core/codering.py``: push and pop, one or many at a time.
"""

from __future__ import annotations

import struct

import sysv_ipc

from server.core.codering import CodeRing
from server.core.ring import region_size
from steps._kit import Stage, run, say
from steps.step03_two_processes import relay_demo, relay_options, run_role

CAPACITY = 64 * 1024
REGION = region_size(CAPACITY)
_CLIENT = struct.Struct("<Q")


class RingChannel:
    """Step 03's channel over a ring: a code is the client id, then the payload."""

    def __init__(self, ring: CodeRing) -> None:
        self.ring = ring

    def put(self, client_id: int, payload: bytes) -> bool:
        return self.ring.push(_CLIENT.pack(client_id) + payload)

    def peek(self) -> tuple[int, bytes] | None:
        return self._split(self.ring.peek())

    def take(self) -> tuple[int, bytes] | None:
        return self._split(self.ring.pop())

    @staticmethod
    def _split(code: bytes | None) -> tuple[int, bytes] | None:
        if code is None:
            return None
        if len(code) < _CLIENT.size:  # shared memory is untrusted input
            raise ValueError(f"a code of {len(code)} bytes has no client id")
        return _CLIENT.unpack_from(code)[0], code[_CLIENT.size :]


def picture(data: bytes | memoryview) -> str:
    return "".join(chr(b) if 32 <= b < 127 else "." for b in data)


def wrap_around_in_plain_memory() -> None:
    cap = 32
    region = bytearray(region_size(cap))
    ring = CodeRing(memoryview(region), cap, init=True)
    data = memoryview(region)[-cap:]
    say(f"1. A ring of {cap} bytes in a plain bytearray (no processes yet).")
    for code in (b"alpha", b"bravo"):
        ring.push(code)
    say(f"   push b'alpha', b'bravo' -> |{picture(data)}|  (each code: 4-byte length + bytes)")
    popped = [ring.pop(), ring.pop()]
    stats = ring.stats()
    say(
        f"   pop, pop -> {popped!r}; head = tail = {stats['head']}: the ring is empty",
        "   (popped bytes are not erased: only head moved past them)",
    )
    ring.push(b"charlie-delta")
    stats = ring.stats()
    say(
        f"   push b'charlie-delta' -> |{picture(data)}|",
        f"   It starts at byte {stats['head'] % cap} and wraps: its end 'lta' is at the start.",
        f"   head = {stats['head']}, tail = {stats['tail']}: the counters only grow; "
        f"the position is counter % {cap}.",
    )
    say(f"   pop -> {ring.pop()!r}, whole again.")
    ring.release()
    data.release()


def rings_on(seg: sysv_ipc.SharedMemory, init: bool) -> tuple[RingChannel, RingChannel]:
    """The inbound and outbound rings of a raw segment; ``init`` formats them."""
    mem = memoryview(seg)
    inbound = CodeRing(mem[:REGION], CAPACITY, init=init)
    outbound = CodeRing(mem[REGION : 2 * REGION], CAPACITY, init=init)
    return RingChannel(inbound), RingChannel(outbound)


def main(argv: list[str]) -> int:
    args = relay_options("python -m steps.step04_code_queue", argv)
    if args.role:
        return run_role(args, rings_on(sysv_ipc.SharedMemory(args.key), init=False))

    wrap_around_in_plain_memory()
    with Stage() as stage:
        key = stage.new_key()
        seg = sysv_ipc.SharedMemory(key, sysv_ipc.IPC_CREX, mode=0o600, size=2 * REGION)
        rings_on(seg, init=True)  # format both rings once, before anyone uses them
        say(
            f"2. Created segment 0x{key:08x} with two rings of {CAPACITY // 1024} KiB, "
            f"formatted them, and started the two processes of step 03 on it."
        )
        note = "3. The logic process still needs 0.2 s per request."
        relay_demo(stage, "steps.step04_code_queue", key, args.port, note)
        say(
            "   Nothing: every request went straight into the inbound ring, in shared",
            "   memory. Step 05 kills a process with codes still waiting there.",
        )
    say(f"5. Done: the processes are stopped and segment 0x{key:08x} is removed.")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
