"""A client for a server in another network namespace (run there with
``ip netns exec``): on each of ``--conns`` connections at once, ``COUNT``
length-framed requests of ``SIZE`` bytes, ``INFLIGHT`` at a time, every
reply checked; it prints, as JSON, how many were answered in order on
each and the seconds it took, and gives up on a connection whose next
reply takes more than ``--patience`` seconds.

    python window_client.py PORT COUNT SIZE INFLIGHT [--conns N] [--patience S]
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import threading
import time


def payload(i: int, size: int) -> bytes:
    return (b"%08d" % i * (size // 8 + 1))[:size]


def converse(port: int, count: int, size: int, inflight: int, patience: float) -> dict:
    sock = socket.create_connection(("127.0.0.1", port), timeout=patience)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sent = answered = 0
    buf = b""
    error = ""
    try:
        while answered < count:
            while sent < count and sent - answered < inflight:
                body = payload(sent, size)
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
                if body != payload(answered, size):
                    error = f"reply {answered} is wrong: {body[:16]!r}..."
                    return {"answered": answered, "error": error}
                answered += 1
    except TimeoutError:
        error = f"no reply for {patience} s"
    finally:
        sock.close()
    return {"answered": answered, "error": error}


def main() -> None:
    ap = argparse.ArgumentParser()
    for name in ("port", "count", "size", "inflight"):
        ap.add_argument(name, type=int)
    ap.add_argument("--conns", type=int, default=1)
    ap.add_argument("--patience", type=float, default=5.0)
    a = ap.parse_args()
    results: list[dict] = [{} for _ in range(a.conns)]

    def run(i: int) -> None:
        results[i] = converse(a.port, a.count, a.size, a.inflight, a.patience)

    start = time.monotonic()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(a.conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"connections": results, "seconds": time.monotonic() - start}))


if __name__ == "__main__":
    main()
