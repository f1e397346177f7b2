"""``python -m server client``: a small interactive line client.

For the chat app where ``nc`` is not installed: each line typed is sent
with a ``\\n``; each line the server sends is printed.  Ends on end of input
(Ctrl-D: the client then stops sending and prints what still comes until the
server closes), Ctrl-C, or when the server closes the connection.

Standard input is read by a thread, not by the selector: a file or a pipe
(``python -m server client < lines.txt``) cannot always be selected on.
"""

from __future__ import annotations

import os
import socket
import sys
import threading

from ..errors import ServerUnreachable


def _send_input(sock: socket.socket) -> None:
    stdin = sys.stdin.fileno()
    try:
        while data := os.read(stdin, 65536):
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)  # end of input: the server sees us leave
    except OSError:
        pass  # the connection is gone; the main thread says so


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
    sock.settimeout(None)
    print(f"connected to {host}:{port}; type a line and press Enter (Ctrl-D to leave)", flush=True)
    threading.Thread(target=_send_input, args=(sock,), daemon=True).start()
    pending = b""
    try:
        while data := sock.recv(65536):
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                print(line.decode(errors="replace"), flush=True)
        if pending:
            print(pending.decode(errors="replace"), flush=True)
        print("the server closed the connection", flush=True)
        return 0
    except ConnectionResetError:
        print("the server reset the connection", flush=True)
        return 0
    finally:
        sock.close()
