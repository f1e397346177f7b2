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
``server/ring.py`` says what other CPUs need.)  A mailbox has no way to
wake the other side, so both processes look at it every millisecond.

**Run it.**  ``python -m steps.step03_two_processes``.

**What to watch.**  Five clients send a request at the same moment.  The
mailbox takes one; the connect process must keep the other four in its own
memory until the logic process empties the slot.  Those four exist nowhere
else: if the connect process died now, they would be lost, and while the
slot is full the connect process can hand over nothing.  That is why step 04
puts a *queue* in the segment.

**Read next.**  ``server/segment.py``: what the real server puts in its
segment.
"""

from __future__ import annotations

import argparse
import socket
import struct
import time
from collections import deque
from typing import Protocol

import sysv_ipc

from steps._kit import DemoError, Stage, child_run, connect, listen, parent_alive, run, say
from steps.step01_blocking_echo import recv_frame, send_frame
from steps.step02_many_clients import SelectorServer

MAILBOX = 4096
_ENTRY = struct.Struct("<QI")  # client id, payload length (at offset 8)
PAYLOAD_MAX = MAILBOX - 20
POLL = 0.001  # a mailbox cannot wake anybody: look again after this long


class Channel(Protocol):
    """One direction between the processes: a Mailbox here, a ring in step 04."""

    def put(self, client_id: int, payload: bytes) -> bool: ...
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

    def take(self) -> tuple[int, bytes] | None:
        """The waiting entry, or None if the slot is empty."""
        if self.seg.read(1, self.offset) != b"\1":
            return None
        client_id, length = _ENTRY.unpack(self.seg.read(_ENTRY.size, self.offset + 8))
        if length > PAYLOAD_MAX:  # shared memory is untrusted input
            raise ValueError(f"mailbox at {self.offset} claims {length} bytes ({PAYLOAD_MAX} max)")
        payload = self.seg.read(length, self.offset + 20)
        self.seg.write(b"\0", self.offset)  # last: now the writer may refill it
        return client_id, payload


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


def run_logic(from_connect: Channel, to_connect: Channel) -> None:
    say("waiting for requests")
    while parent_alive():
        request = from_connect.take()
        if request is None:
            time.sleep(POLL)
            continue
        client_id, payload = request
        reply = slow_upper(payload)
        while not to_connect.put(client_id, reply):
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


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m steps.step03_two_processes")
    sub = parser.add_subparsers(dest="role")
    for role in ("connect", "logic"):
        p = sub.add_parser(role)
        p.add_argument("--key", type=lambda s: int(s, 0), required=True)
        p.add_argument("--port", type=int, default=0)
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    args = parser.parse_args(argv)
    if args.role == "connect":
        inbound, outbound = attach_mailboxes(args.key)
        return child_run(run_connect, inbound, outbound, args.port)
    if args.role == "logic":
        inbound, outbound = attach_mailboxes(args.key)
        return child_run(run_logic, inbound, outbound)

    module = "steps.step03_two_processes"
    with Stage() as stage:
        key = stage.new_key()
        seg = sysv_ipc.SharedMemory(
            key, sysv_ipc.IPC_CREX, mode=0o600, size=2 * MAILBOX, init_character=b"\0"
        )  # (sysv_ipc fills a new segment with spaces unless told otherwise)
        seg.detach()
        say(f"1. Created segment 0x{key:08x} ({2 * MAILBOX} bytes, mode 0600): two mailboxes.")
        say("2. Start the logic process and the connect process; both attach to it.")
        logic = stage.start("logic", module, "logic", "--key", hex(key))
        logic.expect("waiting for requests")
        conn = stage.start(
            "connect", module, "connect", "--key", hex(key), "--port", str(args.port)
        )
        port = int(conn.expect(r"listening on 127\.0\.0\.1:(\d+)")[1])
        say("3. The logic process needs 0.2 s per request and the mailbox holds one.")
        five_clients_at_once(port)
        say("4. Stop the connect process and ask how much it had to hold back:")
        conn.signal(15)
        conn.finish()
        say(
            "   Those requests were only in the connect process's memory: a crash there",
            "   would have lost them, and the single slot made it wait for the logic",
            "   process at every request. Step 04 puts a queue in the segment instead.",
        )
    say(f"5. Done: the processes are stopped and segment 0x{key:08x} is removed.")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
