"""A client for a server in another network namespace (run there with
``ip netns exec``): ``COUNT`` length-framed requests of ``SIZE`` bytes,
``INFLIGHT`` at a time, every reply checked; it prints, as JSON, how many
were answered in order and the seconds it took, and gives up on a reply
that takes more than ``--patience`` seconds.

    python window_client.py PORT COUNT SIZE INFLIGHT [--patience S]
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import time


def payload(i: int, size: int) -> bytes:
    return (b"%08d" % i * (size // 8 + 1))[:size]


def main() -> None:
    ap = argparse.ArgumentParser()
    for name in ("port", "count", "size", "inflight"):
        ap.add_argument(name, type=int)
    ap.add_argument("--patience", type=float, default=5.0)
    a = ap.parse_args()
    sock = socket.create_connection(("127.0.0.1", a.port), timeout=a.patience)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    start = time.monotonic()
    sent = answered = 0
    buf = b""
    error = ""
    try:
        while answered < a.count:
            while sent < a.count and sent - answered < a.inflight:
                body = payload(sent, a.size)
                sock.sendall(struct.pack(">I", len(body)) + body)
                sent += 1
            data = sock.recv(1 << 20)
            if not data:
                error = "closed by the server"
                break
            buf += data
            while len(buf) >= 4 and len(buf) >= 4 + struct.unpack(">I", buf[:4])[0]:
                n = struct.unpack(">I", buf[:4])[0]
                body, buf = buf[4 : 4 + n], buf[4 + n :]
                if body != payload(answered, a.size):
                    raise SystemExit(f"reply {answered} is wrong: {body[:16]!r}...")
                answered += 1
    except TimeoutError:
        error = f"no reply for {a.patience} s"
    print(json.dumps({"answered": answered, "seconds": time.monotonic() - start, "error": error}))


if __name__ == "__main__":
    main()
