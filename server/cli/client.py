"""``python -m server client``: a small interactive line client.

For the chat app where ``nc`` is not installed: each line typed is sent
with a ``\\n``; each line the server sends is printed.  Ends on end of input
(Ctrl-D), Ctrl-C, or when the server closes the connection.
"""

from __future__ import annotations

import os
import selectors
import socket
import sys

from ..errors import ServerUnreachable


def main(host: str, port: int) -> int:
    try:
        sock = socket.create_connection((host, port), timeout=5)
    except OSError as err:
        raise ServerUnreachable(
            f"cannot connect to {host}:{port}: {err.strerror or err}; is the server running "
            f"(python -m server run --app chat)?",
            host=host,
            port=port,
        ) from None
    sock.setblocking(False)
    print(f"connected to {host}:{port}; type a line and press Enter (Ctrl-D to leave)", flush=True)
    sel = selectors.DefaultSelector()
    stdin = sys.stdin.fileno()
    sel.register(sock, selectors.EVENT_READ, "net")
    sel.register(stdin, selectors.EVENT_READ, "tty")
    pending = b""
    try:
        while True:
            for key, _ in sel.select():
                if key.data == "net":
                    data = sock.recv(65536)
                    if not data:
                        if pending:
                            print(pending.decode(errors="replace"), flush=True)
                        print("the server closed the connection", flush=True)
                        return 0
                    pending += data
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        print(line.decode(errors="replace"), flush=True)
                else:
                    line = os.read(stdin, 65536)
                    if not line:
                        return 0
                    sock.setblocking(True)
                    sock.sendall(line)
                    sock.setblocking(False)
    finally:
        sel.close()
        sock.close()
