"""Step 01: a blocking echo server, one client at a time.

**What it adds.**  The starting point: a TCP server that answers every frame
with the same payload.  TCP carries a stream of bytes, not messages, so the
two sides agree on *frames*: a 4-byte big-endian length, then that many
bytes.  The reader must loop, because ``recv(n)`` may return fewer than ``n``
bytes (whatever has arrived so far); ``recv_exactly`` below is that loop.  A
length above a limit is refused before its payload is read: otherwise one
client could make the server hold gigabytes.

**Run it.**  ``python -m steps.step01_blocking_echo``.  The server runs in a
background thread so that this one program can also play two clients.

**What to watch.**  Client A sends a frame in three pieces and the server
reassembles it.  Then client B connects while A is still connected but
silent, and gets *no answer*: the server is stuck in ``recv()`` on A's
socket and cannot even ``accept()`` B.  B is answered only after A leaves.
One slow or idle client blocks everyone: step 02 fixes that.

**Read next.**  ``server/core/framing.py``: the same frames parsed from whatever
bytes arrived, without ever blocking (step 02 uses it).
"""

from __future__ import annotations

import argparse
import socket
import struct
import time
from collections.abc import Callable

from steps._kit import background, connect, listen, run, say

HEADER = struct.Struct(">I")  # the length prefix: 4 bytes, big-endian
MAX_FRAME = 64 * 1024


def send_frame(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(HEADER.pack(len(payload)) + payload)


def recv_exactly(
    sock: socket.socket, n: int, note: Callable[[str], None] | None = None
) -> bytes | None:
    """Exactly ``n`` bytes, or None if the peer closed before sending any.
    ``recv`` returns what has arrived, possibly less than asked: loop."""
    data = b""
    while len(data) < n:
        piece = sock.recv(n - len(data))
        if not piece:
            if data:
                raise ConnectionError(f"peer closed after {len(data)} of {n} bytes")
            return None
        data += piece
        if note and len(data) < n:
            note(f"recv() returned {len(data)} of the {n} bytes asked for; asking again")
    return data


def recv_frame(
    sock: socket.socket, max_frame: int = MAX_FRAME, note: Callable[[str], None] | None = None
) -> bytes | None:
    """One frame's payload; None if the peer closed between frames."""
    header = recv_exactly(sock, HEADER.size, note)
    if header is None:
        return None
    (length,) = HEADER.unpack(header)
    if length > max_frame:
        raise ValueError(f"a frame of {length} bytes is above the limit of {max_frame}")
    payload = recv_exactly(sock, length, note)
    if payload is None:
        raise ConnectionError(f"peer closed before the {length}-byte payload")
    return payload


def serve(listener: socket.socket, clients: int) -> None:
    """Serve ``clients`` clients, one after the other, then return."""
    for _ in range(clients):
        try:
            conn, _addr = listener.accept()
        except OSError:  # the listener was closed: the demo is over (Ctrl-C)
            return
        with conn:
            say("  server: accepted a client; now reading only from it")
            while True:
                try:
                    payload = recv_frame(conn, note=lambda text: say(f"  server: {text}"))
                except (ValueError, ConnectionError) as err:
                    say(f"  server: closing the client: {err}")
                    break
                if payload is None:
                    say("  server: the client left")
                    break
                say(f"  server: echoing {payload!r}")
                send_frame(conn, payload)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m steps.step01_blocking_echo")
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    args = parser.parse_args(argv)

    with listen(args.port) as listener:
        port = listener.getsockname()[1]
        say(f"1. A blocking echo server listens on 127.0.0.1:{port}.")
        server = background(serve, listener, 2)

        say("2. Client A connects and sends b'hello' as one frame.")
        a = connect(port)
        send_frame(a, b"hello")
        say(f"   A got back {recv_frame(a)!r}.")

        say("3. Client A sends b'in pieces' in three pieces, 0.2 s apart.")
        wire = HEADER.pack(9) + b"in pieces"
        for piece in (wire[:2], wire[2:6], wire[6:]):
            a.sendall(piece)
            time.sleep(0.2)
        say(f"   A got back {recv_frame(a)!r}: the server waited for the whole frame.")

        say("4. Client B connects while A stays connected (but silent) and sends b'me too?'.")
        b = connect(port)
        send_frame(b, b"me too?")
        b.settimeout(1.0)
        try:
            early = recv_frame(b)
        except TimeoutError:
            say("   B got no answer within 1 s: the server is blocked in recv() on A.")
        else:
            say(f"   B was answered at once ({early!r}): this server should not do that!")

        say("5. Client A leaves.")
        a.close()
        b.settimeout(10.0)
        say(f"   Only now is B accepted and answered: {recv_frame(b)!r}.")
        b.close()
        server.join(10)

    say(
        "6. Done. One idle client blocked the other: step 02 serves many clients at once.",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
