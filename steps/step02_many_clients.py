"""Step 02: many clients at once, with non-blocking sockets and a selector.

**What it adds.**  Step 01 blocked in ``recv()`` on one client while the
others waited.  Here every socket is non-blocking and one loop asks the
operating system which sockets are ready (``selectors``: epoll on Linux),
then does only what will not block:

* a readable socket gets *one* ``recv``; its bytes go to that connection's
  framer, which keeps an incomplete frame until the rest arrives (a partial
  read is now normal, not a reason to wait);
* a reply goes to the connection's out-buffer; ``send`` takes what the
  kernel will accept *now*, and if some is left the loop also watches for
  "writable" (``EVENT_WRITE``) and sends the rest later (a partial write).

``SelectorServer`` is written to be extended: ``on_frame`` echoes, and
step 03 overrides it to hand the frame to another process instead.

**Run it.**  ``python -m steps.step02_many_clients``.

**What to watch.**  Client B is answered while client A is in the middle of
a frame (step 01 would hang), A's frame arrives one byte at a time and is
answered when complete, and client C's 8 MiB reply does not fit the kernel's
buffers while C is not reading: the rest waits in C's out-buffer, and B is
still served meanwhile.

**Read next.**  ``server/core/framing.py`` (the framer used here) and
``server/proc/connect.py``, the production version of this loop, with every
policy about clients (bounded out-buffers, idle clients) in
``server/core/clients.py``.
"""

from __future__ import annotations

import argparse
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field

from server import FrameTooLarge
from server.core.framing import LengthFraming
from steps._kit import background, connect, listen, run, say
from steps.step01_blocking_echo import HEADER, recv_frame, send_frame


@dataclass
class Client:
    id: int
    sock: socket.socket
    framing: LengthFraming
    out: bytearray = field(default_factory=bytearray)
    events: int = selectors.EVENT_READ


class SelectorServer:
    """One thread, any number of clients; ``poll`` runs one round."""

    def __init__(self, listener: socket.socket, max_frame: int = 64 * 1024) -> None:
        self.selector = selectors.DefaultSelector()
        self.max_frame = max_frame
        listener.setblocking(False)
        self.selector.register(listener, selectors.EVENT_READ, None)
        self.clients: dict[int, Client] = {}
        self._next_id = 1
        self.partial_sends = 0

    # -- what a subclass changes ------------------------------------------------
    def on_frame(self, client_id: int, payload: bytes) -> None:
        """A complete frame arrived: echo it."""
        self.send(client_id, payload)

    # -- the loop ---------------------------------------------------------------
    def poll(self, timeout: float | None) -> None:
        for key, events in self.selector.select(timeout):
            if key.data is None:
                self._accept(key.fileobj)  # type: ignore[arg-type]
                continue
            client: Client = key.data
            if events & selectors.EVENT_READ:
                self._read(client)
            if events & selectors.EVENT_WRITE and client.id in self.clients:
                self._flush(client)

    def send(self, client_id: int, payload: bytes) -> bool:
        """Queue a reply; False if that client is gone."""
        client = self.clients.get(client_id)
        if client is None:
            return False
        client.out += client.framing.encode(payload)
        self._flush(client)
        return True

    def close_all(self) -> None:
        for client in list(self.clients.values()):
            self._close(client)
        for key in list(self.selector.get_map().values()):
            self.selector.unregister(key.fileobj)
        self.selector.close()

    # -- the mechanics --------------------------------------------------------------
    def _accept(self, listener: socket.socket) -> None:
        try:
            sock, _addr = listener.accept()
        except BlockingIOError:  # another loop took it, or the client gave up
            return
        sock.setblocking(False)
        client = Client(self._next_id, sock, LengthFraming(self.max_frame))
        self._next_id += 1
        self.clients[client.id] = client
        self.selector.register(sock, client.events, client)

    def _read(self, client: Client) -> None:
        try:
            data = client.sock.recv(256 * 1024)
        except BlockingIOError:
            return
        except ConnectionError:
            data = b""
        if not data:
            self._close(client)
            return
        try:
            frames = client.framing.feed(data)
        except FrameTooLarge:
            self._close(client)
            return
        for payload in frames:
            self.on_frame(client.id, payload)

    def _flush(self, client: Client) -> None:
        try:
            sent = client.sock.send(client.out) if client.out else 0
        except BlockingIOError:
            sent = 0
        except OSError:
            self._close(client)
            return
        del client.out[:sent]
        if client.out:
            self.partial_sends += 1
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.out else 0)
        if want != client.events:
            client.events = want
            self.selector.modify(client.sock, want, client)

    def _close(self, client: Client) -> None:
        self.clients.pop(client.id, None)
        self.selector.unregister(client.sock)
        client.sock.close()


BIG = 8 * 1024 * 1024


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m steps.step02_many_clients")
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    args = parser.parse_args(argv)

    stop = threading.Event()
    with listen(args.port) as listener:
        port = listener.getsockname()[1]
        server = SelectorServer(listener, max_frame=2 * BIG)

        def loop() -> None:
            while not stop.is_set():
                server.poll(0.1)

        thread = background(loop)
        say(f"1. A selector loop listens on 127.0.0.1:{port}, in one thread.")
        try:
            a, b, c = connect(port), connect(port), connect(port)
            say("2. Client A sends only the first 2 bytes of a frame, then pauses.")
            wire = HEADER.pack(6) + b"slowly"
            a.sendall(wire[:2])
            time.sleep(0.2)
            say("3. Client B sends b'hello'.")
            send_frame(b, b"hello")
            say(f"   B got back {recv_frame(b)!r} although A's frame is incomplete.")

            say(f"4. Client A sends the other {len(wire) - 2} bytes one at a time.")
            for i in range(2, len(wire)):
                a.sendall(wire[i : i + 1])
                time.sleep(0.02)
            say(f"   A got back {recv_frame(a)!r}: the framer kept the pieces until complete.")

            say("5. Client C sends an 8 MiB frame and reads nothing for 0.5 s.")
            big = bytes(range(256)) * (BIG // 256)
            send_frame(c, big)
            time.sleep(0.5)
            send_frame(b, b"still there?")
            say(f"   Meanwhile B asks again and gets back {recv_frame(b)!r} at once.")
            echoed = recv_frame(c, max_frame=BIG)
            same = "byte for byte" if echoed == big else "DAMAGED"
            say(f"   C now reads: all {len(echoed or b'') // 1024 // 1024} MiB came back, {same}.")
            if server.partial_sends:
                say(
                    f"   The kernel took C's reply in parts ({server.partial_sends} times send() "
                    f"left a rest); each rest waited in C's out-buffer for EVENT_WRITE."
                )
            else:
                say("   The kernel took C's whole reply at once: its buffers are unusually large.")
            for sock in (a, b, c):
                sock.close()
        finally:
            stop.set()
            thread.join(10)
            server.close_all()
    say("6. Done. Three clients, one thread, nobody waited for anybody else.")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
