"""Step 12: a client keeps its TCP connection while the process serving it dies.

**What it adds.**  Until now a process that held a client's socket took the
connection with it when it died: the kernel closes a connection once no
process has a descriptor for it.  Two kernel facilities change that:

1. *SCM_RIGHTS.*  Over a Unix socket a process can send a *descriptor*, not
   bytes: the receiver gets a new descriptor for the same open socket
   (``socket.send_fds`` / ``recv_fds``).  Here the driver (playing the
   supervisor) accepts the client, keeps one descriptor and sends another to
   a *holder* process that serves it.  When the holder is killed, the
   driver's descriptor keeps the connection open, and the driver sends it
   to the next holder.
2. *The kernel's byte counters.*  Every descriptor of the connection reads
   the same ``TCP_INFO`` and ``SIOCINQ``: bytes that arrived, and of those
   how many are still unread.  A holder that takes only *whole lines* out of
   the socket (it peeks, finds the newline, then reads exactly that line)
   never dies with half a line inside it: what it had not answered is still
   in the kernel, and the counters show it.

The real server does the same with its connect process (``server/proc/keeper.py``,
``server/core/streams.py``): the supervisor holds a duplicate of every client
socket; connect takes bytes out only once their frames are queued, and keeps
each reply in the queue until the kernel took it; a restarted connect process
reads a ledger and these counters to skip exactly what was done.  And when the
supervisor itself dies, the next one is handed the descriptors back
(``server/proc/adoption.py``).

**Run it.**  ``python -m steps.step12_keep_connections``.

**What to watch.**  The client's local address stays the same all along:
one TCP connection.  Holder #1 answers two lines and is killed with SIGKILL;
line 3, sent while no holder runs, waits in the kernel (the counters say
so); holder #2 gets the socket and answers it; it is killed too; holder #3
answers line 4.

**Read next.**  ``server/ipc/tcpstate.py`` (the counters) and
``server/proc/keeper.py`` (the supervisor's duplicates).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import tempfile
import time

from server.ipc.tcpstate import counters
from steps._kit import (
    Child,
    DemoError,
    Stage,
    child_run,
    connect,
    exit_text,
    listen,
    parent_alive,
    run,
    say,
)


def run_holder(path: str) -> None:
    """Get the client's socket from the driver, answer whole lines."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as control:
        control.connect(path)
        _msg, fds, _flags, _addr = socket.recv_fds(control, 16, 1)
    if len(fds) != 1:
        raise DemoError("the driver sent no socket")
    client = socket.socket(fileno=fds[0])
    say(f"got the socket of the client at {client.getpeername()[0]}:{client.getpeername()[1]}")
    while parent_alive():
        data = client.recv(4096, socket.MSG_PEEK)  # look, take nothing
        if not data:
            return  # the client closed
        end = data.find(b"\n")
        if end < 0:
            time.sleep(0.01)  # half a line so far: it stays in the kernel
            continue
        line = client.recv(end + 1)  # exactly one line out of the socket
        client.sendall(b"echo: " + line)
        say(f"answered {line.decode().strip()!r}")


def hand_over(units: socket.socket, held: socket.socket) -> None:
    """Send a descriptor of ``held`` to the next holder that connects."""
    holder, _ = units.accept()
    with holder:
        socket.send_fds(holder, [b"take it"], [held.fileno()])


def show_counters(held: socket.socket, what: str) -> None:
    k = counters(held)
    say(
        f"   {what}: the kernel received {k.received} bytes, {k.consumed} taken out by "
        f"holders, {k.unread} waiting"
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m steps.step12_keep_connections", description="Without a ROLE: run the demo."
    )
    sub = parser.add_subparsers(dest="role", metavar="ROLE")
    holder = sub.add_parser("holder", help="the demo's holder process (the demo starts it)")
    holder.add_argument("--socket", required=True)
    args = parser.parse_args(argv)
    if args.role == "holder":
        return child_run(run_holder, args.socket)

    module = "steps.step12_keep_connections"
    folder = tempfile.mkdtemp(prefix="stcp-step12-")
    path = os.path.join(folder, "handover")
    try:
        with (
            Stage() as stage,
            listen() as listener,
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as units,
        ):
            units.bind(path)
            units.listen(4)
            client = connect(listener.getsockname()[1])
            held, _ = listener.accept()  # the driver's own descriptor: it keeps the connection
            me = "{}:{}".format(*client.getsockname()[:2])
            say(f"1. A client connects from {me}; the driver accepts it and keeps a descriptor.")

            def start(label: str) -> Child:
                child = stage.start(label, module, "holder", "--socket", path)
                hand_over(units, held)
                child.expect("got the socket")
                return child

            def reply() -> None:
                say(f"   the client at {me} gets {client.recv(100).decode().strip()!r}")

            def talk(child: Child, n: int) -> None:
                client.sendall(b"line %d\n" % n)
                child.expect(f"answered 'line {n}'")
                reply()

            say("2. Start holder #1; the driver sends it the socket (SCM_RIGHTS).")
            first = start("holder #1")
            talk(first, 1)
            talk(first, 2)
            say(f"3. kill -9 holder #1 (pid {first.pid}): {exit_text(first.kill())}.")
            client.sendall(b"line 3\n")  # nobody serves it now
            time.sleep(0.3)
            show_counters(held, "line 3 sent while no holder runs")
            say("4. Start holder #2 and send it the same socket; line 3 was waiting:")
            second = start("holder #2")
            second.expect("answered 'line 3'")
            reply()
            say(f"5. kill -9 holder #2 (pid {second.pid}): {exit_text(second.kill())}.")
            show_counters(held, "after the second kill")
            say("6. Start holder #3:")
            third = start("holder #3")
            talk(third, 4)
            client.close()
            third.finish()
            say("7. The client left; one TCP connection carried all four lines.")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
