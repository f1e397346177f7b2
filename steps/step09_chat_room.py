"""Step 09: a chat room on the real server.

**What it adds.**  Everything so far, assembled: ``python -m server run``
starts a supervisor that makes the segment (INIT or RECOVER, step 07) and
starts a connect process (step 02's loop, grown up) and a logic process that
trade codes through two CodeQueues (step 06).  The application is a class
with ``on_open``, ``on_message`` and ``on_close``; ``server/core/apps.py``'s
``Chat`` is a dozen lines.  A chat room needs three more things:

* *broadcast*: one line reaches every other user.  The logic process does
  not loop over the users; it pushes one ``BROADCAST`` code, and the connect
  process, which owns the sockets, copies the line to each of them.
* *a user limit*: ``--max-conns``.  One user too many is told so
  (``full_message``) and closed, before the logic process hears of it.
* *signals through the event loop*: a signal can arrive at any instant, in
  the middle of any statement.  The handler only records it, and
  ``signal.set_wakeup_fd`` writes a byte to a pipe that the supervisor's
  ``select`` watches, so the loop wakes up and stops the workers in order,
  at a moment of its choosing (the original used a pipe the same way).

**Run it.**  ``python -m steps.step09_chat_room``.  To chat yourself, run
``python -m server run --app chat`` and, from other shells,
``python -m server client`` (or ``nc 127.0.0.1 7000``).

**What to watch.**  Three users join and each hears the others arrive; a
line from one reaches the two others; a fourth user is turned away; a user
leaves and the rest are told.  Then a ``SIGTERM``: the supervisor stops the
connect process first, then the logic process once its queue is empty.

**Read next.**  ``server/core/apps.py`` (the chat), ``server/core/app.py`` (what a
``conn`` can do), ``server/proc/connect.py`` (the broadcast) and
``server/proc/supervisor.py`` (the signals).
"""

from __future__ import annotations

import argparse
import re
import signal

from steps._kit import DemoError, Stage, connect, run, say


class User:
    """A chat client on a plain socket: lines end with ``\\n``."""

    def __init__(self, name: str, port: int) -> None:
        self.name = name
        self.sock = connect(port)
        self.sock.settimeout(5)
        self.buffer = b""

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode() + b"\n")

    def hear(self) -> str | None:
        """The next line, or None when the server closed the connection."""
        while b"\n" not in self.buffer:
            try:
                data = self.sock.recv(4096)
            except ConnectionResetError:
                data = b""
            if not data:
                return None
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()

    def expect(self, pattern: str) -> re.Match[str]:
        try:
            line = self.hear()
        except TimeoutError:
            line = "(nothing within 5 s)"
        match = re.fullmatch(pattern, line or "(closed)")
        if match is None:
            raise DemoError(f"{self.name} expected {pattern!r} but heard {line!r}")
        heard = "(the server closed the connection)" if line is None else line
        say(f"     {self.name} hears: {heard}")
        return match

    def close(self) -> None:
        self.sock.close()


def log_message(line: str) -> str:
    """``2026-01-01 12:00:00,000 supervisor[42] INFO text`` -> ``text``."""
    return re.sub(r"^\S+ \S+ \w+\[\d+\] \w+ ", "", line)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m steps.step09_chat_room")
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    args = parser.parse_args(argv)

    with Stage() as stage:
        key = stage.new_key()
        command = ["run", "--app", "chat", "--max-conns", "3", "--key", hex(key)]
        say(f"1. python -m server {' '.join(command)} --port {args.port}")
        server = stage.start(
            "server",
            "server",
            *command,
            "--port",
            str(args.port),
            relay=False,
            tidy=log_message,
        )
        server.expect("start mode INIT")
        port = int(server.expect(r"listening on 127\.0\.0\.1:(\d+)")[1])

        say("2. Three users join, one after the other.")
        users: list[User] = []
        for name in ("alice", "bob", "carol"):
            user = User(name, port)
            user.expect(r"\* welcome, you are user\d+")
            for other in users:
                other.expect(r"\* user\d+ joined")
            users.append(user)
        alice, bob, carol = users

        say("3. alice says 'hello, room'; the logic process pushes one BROADCAST code.")
        alice.send("hello, room")
        bob.expect(r"user\d+: hello, room")
        carol.expect(r"user\d+: hello, room")

        say("4. dave is the fourth user, one above --max-conns 3.")
        dave = User("dave", port)
        dave.expect("too many users, try again later")
        dave.expect(r"\(closed\)")
        dave.close()

        say("5. bob leaves.")
        bob.close()
        alice.expect(r"\* user\d+ left")
        carol.expect(r"\* user\d+ left")

        say(f"6. SIGTERM to the supervisor (pid {server.pid}): its loop wakes up and stops.")
        server.signal(signal.SIGTERM)
        server.expect("stop requested")
        server.expect("connect process stopped")
        server.expect("stopped; the segment stays")
        for user in (alice, carol):
            user.expect(r"\(closed\)")
            user.close()
        status = server.finish()
        if status != 0:
            raise DemoError(f"the server exited with status {status}, not 0")
    say(f"7. Done: the server exited with status 0 and segment 0x{key:08x} is removed.")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
