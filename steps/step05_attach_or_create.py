"""Step 05: create the segment only if it is not there; otherwise attach.

**What it adds.**  A System V segment outlives the processes that use it:
only an explicit removal (or a reboot) destroys it.  So when a process that
owns the segment dies, even by ``kill -9``, the codes waiting in its rings are
still there, and a restarted process can carry on where the dead one stopped.
Two rules make that work:

1. *Attach, do not re-create.*  Ask for a **new** segment with ``IPC_CREAT |
   IPC_EXCL``.  If that succeeds, this is the first start (``is_new`` is
   True).  If it fails with ``EEXIST``, a segment is there: attach to it
   (``is_new`` False).  Removing and re-creating it would throw the codes
   away.
2. *Format only what is new.*  The rings are formatted (counters set to 0)
   only when ``is_new``; otherwise the process keeps the counters and the
   records and only checks them (``CodeRing(..., init=False)``).

Here the worker (it plays the logic process) owns the segment, and the
driver plays the connect process: it pushes requests and reads replies.

**Run it.**  ``python -m steps.step05_attach_or_create``.

**What to watch.**  Worker #1 creates the segment, handles three of eight
requests and gets stuck; the driver kills it with ``SIGKILL``.  Worker #2
finds the segment, attaches without formatting, finds the five waiting
requests and answers them.  Then the same story with a worker that formats
the rings on every start: the five requests are gone.  (The kill lands while
the worker is stuck, between two requests; a kill in the middle of a request
is the business of ``server/core/journal.py``.)

**Read next.**  ``server/ipc/shm.py``, ``SHMFactory.create_product``: the same
decision, plus the checks this raw version leaves out (size, owner, mode).
"""

from __future__ import annotations

import time

import sysv_ipc

from steps._kit import DemoError, Stage, child_run, exit_text, parent_alive, roles_parser, run, say
from steps.step03_two_processes import POLL, handle_next
from steps.step04_code_queue import REGION, RingChannel, rings_on

SIZE = 2 * REGION
REQUESTS = 8


def attach_or_create(key: int, size: int) -> tuple[sysv_ipc.SharedMemory, bool]:
    """The segment ``key`` and whether it is new (``is_new``)."""
    try:
        seg = sysv_ipc.SharedMemory(key, sysv_ipc.IPC_CREX, mode=0o600, size=size)
        return seg, True
    except sysv_ipc.ExistentialError:  # EEXIST: an earlier process made it
        seg = sysv_ipc.SharedMemory(key)
    if seg.size != size:
        seg.detach()
        raise DemoError(f"segment 0x{key:08x} has {seg.size} bytes, not {size}: remove it first")
    return seg, False


def run_worker(key: int, stop_after: int, always_format: bool) -> None:
    seg, is_new = attach_or_create(key, SIZE)
    if is_new:
        say("IPC_CREAT|IPC_EXCL succeeded: a new segment, so format both rings")
    elif always_format:
        say("EEXIST: the segment is there, but this worker formats the rings anyway")
    else:
        say("EEXIST: the segment is there, so attach and keep the rings as they are")
    inbound, outbound = rings_on(seg, init=is_new or always_format)
    say(f"{len(inbound.ring)} request(s) waiting in the inbound ring")
    handled = 0
    while parent_alive():
        payload = handle_next(inbound, outbound, lambda request: b"done: " + request)
        if payload is None:
            time.sleep(POLL)
            continue
        handled += 1
        say(f"handled {payload.decode()}")
        if handled == stop_after:
            say(f"stuck after {handled} requests (pretending to hang, waiting to be killed)")
            while parent_alive():
                time.sleep(0.1)


def take_replies(outbound: RingChannel, count: int) -> list[bytes]:
    replies: list[bytes] = []
    deadline = time.monotonic() + 10
    while len(replies) < count and time.monotonic() < deadline:
        reply = outbound.take()
        if reply is None:
            time.sleep(POLL)
        else:
            replies.append(reply[1])
    return replies


def crash_and_restart(stage: Stage, always_format: bool) -> list[bytes]:
    """Worker #1 handles 3 of 8 requests and is killed; worker #2 starts.
    Returns what came back after the restart."""
    module = "steps.step05_attach_or_create"
    key = stage.new_key()
    worker_args = ["worker", "--key", hex(key)]
    say(f"   Start worker #1 with key 0x{key:08x}.")
    first = stage.start("worker #1", module, *worker_args, "--stop-after", "3")
    first.expect("waiting in the inbound ring")
    inbound, outbound = rings_on(sysv_ipc.SharedMemory(key), init=False)
    say(f"   Push {REQUESTS} requests into the inbound ring.")
    for i in range(1, REQUESTS + 1):
        inbound.put(i, b"request %d" % i)
    first.expect("stuck after")
    before = take_replies(outbound, 3)
    say(
        f"   {len(before)} replies came back; {len(inbound.ring)} requests still wait. "
        f"kill -9 worker #1 (pid {first.pid}):"
    )
    say(f"   worker #1 {exit_text(first.kill())}; its segment is still there.")
    say("   Start worker #2 with the same key.")
    again = ["--always-format"] if always_format else []
    second = stage.start("worker #2", module, *worker_args, *again)
    waiting = int(second.expect(r"(\d+) request\(s\) waiting")[1])
    after = take_replies(outbound, waiting)
    if waiting:
        second.expect(f"handled request {REQUESTS}")
    second.signal(15)
    second.finish()
    return after


def main(argv: list[str]) -> int:
    parser, roles = roles_parser("python -m steps.step05_attach_or_create", "worker")
    worker = roles["worker"]
    worker.add_argument("--stop-after", type=int, default=0)
    worker.add_argument("--always-format", action="store_true")
    args = parser.parse_args(argv)
    if args.role == "worker":
        return child_run(run_worker, args.key, args.stop_after, args.always_format)

    with Stage() as stage:
        say("1. Attach or create: a worker that restarts finds its pending codes.")
        after = crash_and_restart(stage, always_format=False)
        expected = [b"done: request %d" % i for i in range(4, REQUESTS + 1)]
        if after != expected:
            raise DemoError(f"after the restart expected {expected!r}, got {after!r}")
        say(
            f"   After the restart came {len(after)} replies, {after[0]!r} to {after[-1]!r}:",
            f"   all {REQUESTS} requests answered, none lost, none twice.",
        )
        say("2. The same with a worker that formats the rings on every start:")
        lost = crash_and_restart(stage, always_format=True)
        if lost:
            raise DemoError(f"a formatted ring should hold nothing, but {lost!r} came back")
        say(
            f"   After the restart came {len(lost)} replies: {REQUESTS - 3} requests were lost. "
            f"That is why",
            "   a restarted process must attach and must not format what it finds.",
        )
    say("3. Done: every worker is stopped and both segments are removed.")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
