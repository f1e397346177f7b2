"""Step 03: a connect process and a logic process, sharing one segment.

**What it adds.**  The server is split in two processes.  The *connect*
process owns the sockets (step 02's loop); the *logic* process runs the
application (here: upper-case the text, slowly, 0.2 s per request).  So a
bug or a long computation in the application no longer stops the sockets,
and either process can be restarted alone (later steps).

They talk through a System V shared-memory segment: the driver creates it
with ``IPC_CREAT | IPC_EXCL`` and mode 0600 (only our user may touch it), the
two processes attach to it by its key.  This step uses the raw mechanism: one
*mailbox* per direction, each holding a single request or reply::

    offset  size  field
    ------  ----  ---------------------------------------------------------
         0     1  full: 0 = empty (the writer may fill it), 1 = full
                  (the reader may empty it); each side flips it one way
         8     8  client id, u64 little-endian
        16     4  payload length, u32 little-endian (checked: <= 4076)
        20  4076  payload
    the inbound mailbox (connect -> logic) is at 0, the outbound at 4096

The order of the writes is the whole protocol: the writer fills id, length
and payload, and sets ``full`` *last*; the reader copies everything out and
clears ``full`` *last*.  (On x86 stores become visible in program order;
``server/core/ring.py`` says what other CPUs need.)  The logic process leaves a
request in its mailbox while it works on it and removes it only once the
reply is in the other mailbox, so a crash in between would repeat the
request rather than lose it.  A mailbox cannot wake the other side, so both
processes look at it every millisecond.

**Run it.**  ``python -m steps.step03_two_processes``.

**What to watch.**  Five clients send a request at the same moment.  The
mailbox takes one; the connect process must keep the other four in its own
memory until the logic process empties the slot.  Those four exist nowhere
else: if the connect process died now, they would be lost, and while the
slot is full the connect process can hand over nothing.  That is why step 04
puts a *queue* in the segment.

**Read next.**  ``server/ipc/segment.py``: what the real server puts in its
segment.
"""

from __future__ import annotations

import argparse
import signal
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

import sysv_ipc

from steps._kit import (
    DemoError,
    Stage,
    child_run,
    connect,
    listen,
    parent_alive,
    roles_parser,
    run,
    say,
)
from steps.step01_blocking_echo import recv_frame, send_frame
from steps.step02_many_clients import SelectorServer

MAILBOX = 4096
_ENTRY = struct.Struct("<QI")  # client id, payload length (at offset 8)
PAYLOAD_MAX = MAILBOX - 20
POLL = 0.001  # a mailbox cannot wake anybody: look again after this long


class Channel(Protocol):
    """One direction between the processes: a Mailbox here, a ring in step 04."""

    def put(self, client_id: int, payload: bytes) -> bool: ...
    def peek(self) -> tuple[int, bytes] | None: ...
    def take(self) -> tuple[int, bytes] | None: ...


class Mailbox:
    """One slot in a raw segment at ``offset`` (layout in the docstring)."""

    def __init__(self, seg: sysv_ipc.SharedMemory, offset: int) -> None:
        self.seg, self.offset = seg, offset

    def put(self, client_id: int, payload: bytes) -> bool:
        """False while the slot is still full."""
        if len(payload) > PAYLOAD_MAX:
            raise ValueError(f"a payload of {len(payload)} bytes does not fit ({PAYLOAD_MAX} max)")
        if self.seg.read(1, self.offset) != b"\0":
            return False
        self.seg.write(_ENTRY.pack(client_id, len(payload)) + payload, self.offset + 8)
        self.seg.write(b"\1", self.offset)  # last: now the reader may look
        return True

    def peek(self) -> tuple[int, bytes] | None:
        """The waiting entry, left in place; None if the slot is empty."""
        if self.seg.read(1, self.offset) != b"\1":
            return None
        client_id, length = _ENTRY.unpack(self.seg.read(_ENTRY.size, self.offset + 8))
        if length > PAYLOAD_MAX:  # shared memory is untrusted input
            raise ValueError(f"mailbox at {self.offset} claims {length} bytes ({PAYLOAD_MAX} max)")
        return client_id, self.seg.read(length, self.offset + 20)

    def take(self) -> tuple[int, bytes] | None:
        """The waiting entry, removed; None if the slot is empty."""
        entry = self.peek()
        if entry is not None:
            self.seg.write(b"\0", self.offset)  # last: now the writer may refill it
        return entry


class RelayServer(SelectorServer):
    """The connect process: frames go to the logic process, replies come
    back through two channels."""

    def __init__(self, listener: socket.socket, to_logic: Channel, from_logic: Channel) -> None:
        super().__init__(listener)
        self.to_logic, self.from_logic = to_logic, from_logic
        self.waiting: deque[tuple[int, bytes]] = deque()  # held in *our* memory
        self.most_waiting = 0

    def on_frame(self, client_id: int, payload: bytes) -> None:
        self.waiting.append((client_id, payload))

    def pump(self) -> None:
        """Hand over what the segment takes; deliver the replies."""
        while self.waiting and self.to_logic.put(*self.waiting[0]):
            self.waiting.popleft()
        self.most_waiting = max(self.most_waiting, len(self.waiting))
        while (reply := self.from_logic.take()) is not None:
            self.send(*reply)


def run_connect(to_logic: Channel, from_logic: Channel, port: int) -> None:
    with listen(port) as listener:
        server = RelayServer(listener, to_logic, from_logic)
        say(f"listening on 127.0.0.1:{listener.getsockname()[1]}")
        try:
            while parent_alive():
                server.poll(POLL)
                server.pump()
        finally:
            say(
                f"stopping; at most {server.most_waiting} request(s) had to wait in my own "
                f"memory because the segment had no room"
            )
            server.close_all()


def slow_upper(payload: bytes) -> bytes:
    time.sleep(0.2)  # the application thinks hard
    return payload.upper()


def handle_next(
    from_connect: Channel, to_connect: Channel, work: Callable[[bytes], bytes]
) -> bytes | None:
    """Answer the oldest request, if there is one, and return it.  The
    request leaves the channel only once its reply is in the other one: a
    crash in between makes it run again rather than vanish."""
    request = from_connect.peek()
    if request is None:
        return None
    client_id, payload = request
    reply = work(payload)
    while not to_connect.put(client_id, reply):
        time.sleep(POLL)
    from_connect.take()
    return payload


def run_logic(from_connect: Channel, to_connect: Channel) -> None:
    say("waiting for requests")
    while parent_alive():
        if handle_next(from_connect, to_connect, slow_upper) is None:
            time.sleep(POLL)


def five_clients_at_once(port: int) -> None:
    """The demo's load: five clients, one request each, sent together."""
    clients = [connect(port) for _ in range(5)]
    say("   Five clients connect, then each sends one request at the same moment.")
    for i, sock in enumerate(clients, 1):
        send_frame(sock, b"request from client %d" % i)
    replies = [recv_frame(sock) for sock in clients]
    for sock in clients:
        sock.close()
    expected = [b"REQUEST FROM CLIENT %d" % i for i in range(1, 6)]
    if replies != expected:
        raise DemoError(f"expected {expected!r}, got {replies!r}")
    say(f"   Every client got its own request back in capitals, e.g. {replies[0]!r}.")


def attach_mailboxes(key: int) -> tuple[Mailbox, Mailbox]:
    seg = sysv_ipc.SharedMemory(key)
    return Mailbox(seg, 0), Mailbox(seg, MAILBOX)


def relay_options(prog: str, argv: list[str]) -> argparse.Namespace:
    """The options of steps 03 and 04: the demo, or one of its processes."""
    parser, roles = roles_parser(prog, "connect", "logic")
    roles["connect"].add_argument("--port", type=int, default=0)
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    return parser.parse_args(argv)


def run_role(args: argparse.Namespace, channels: tuple[Channel, Channel]) -> int:
    """Be the connect or the logic process of the demo."""
    if args.role == "connect":
        return child_run(run_connect, *channels, args.port)
    return child_run(run_logic, *channels)


def relay_demo(stage: Stage, module: str, key: int, port: int, note: str) -> None:
    """Start the logic and the connect process on segment ``key``, say
    ``note``, let five clients in, and stop the connect process, which says
    what it held back."""
    logic = stage.start("logic", module, "logic", "--key", hex(key))
    logic.expect("waiting for requests")
    conn = stage.start("connect", module, "connect", "--key", hex(key), "--port", str(port))
    port = int(conn.expect(r"listening on 127\.0\.0\.1:(\d+)")[1])
    say(note)
    five_clients_at_once(port)
    say("4. Stop the connect process and ask how much it had to hold back:")
    conn.signal(signal.SIGTERM)
    conn.finish()


def main(argv: list[str]) -> int:
    args = relay_options("python -m steps.step03_two_processes", argv)
    if args.role:
        return run_role(args, attach_mailboxes(args.key))

    with Stage() as stage:
        key = stage.new_key()
        seg = sysv_ipc.SharedMemory(
            key, sysv_ipc.IPC_CREX, mode=0o600, size=2 * MAILBOX, init_character=b"\0"
        )  # (sysv_ipc fills a new segment with spaces unless told otherwise)
        seg.detach()
        say(
            f"1. Created segment 0x{key:08x} ({2 * MAILBOX} bytes, mode 0600): two mailboxes.",
            "2. Start the logic process and the connect process; both attach to it.",
        )
        note = "3. The logic process needs 0.2 s per request and the mailbox holds one."
        relay_demo(stage, "steps.step03_two_processes", key, args.port, note)
        say(
            "   Those requests were only in the connect process's memory: a crash there",
            "   would have lost them, and the single slot made it wait for the logic",
            "   process at every request. Step 04 puts a queue in the segment instead.",
        )
    say(f"5. Done: the processes are stopped and segment 0x{key:08x} is removed.")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
