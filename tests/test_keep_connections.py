"""Client connections survive ``kill -9`` of the connect process, byte-exact.

The supervisor holds a duplicate of every client socket; a restarted
connect process resumes each stream where the stream ledger and the
kernel's counters say it stands (``server.core.streams``).  These tests
kill connect with real SIGKILLs at random moments under load: no client
may notice more than a pause.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time

from helpers.chaos import chaos
from helpers.server import EchoClient, LineClient, ServerProc


def test_20_pipelining_clients_see_20_connect_kills_as_pauses_only() -> None:
    report = chaos("connect", 20, "0.3-1.0")
    assert report["restarts"] == 20, report
    assert report["client_disconnects"] == 0, report


def test_20_pipelining_clients_see_3_supervisor_kills_as_nothing() -> None:
    """Each kill -9 of the supervisor is followed by ``run`` again, which
    adopts the workers that served on meanwhile."""
    report = chaos("supervisor", 3, "1.0-1.5")
    assert report["restarts"] == 0, report  # nothing to restart: the workers never stopped
    assert report["client_disconnects"] == 0, report


def test_every_chat_line_reaches_every_other_user_once_while_connect_is_killed(
    start_server,  # type: ignore[no-untyped-def]
) -> None:
    server: ServerProc = start_server("--app", "chat")
    users, names = [], []
    for _ in range(5):
        users.append(LineClient(server.port, timeout=20))
        welcome = users[-1].line()
        assert welcome.startswith("* welcome, you are "), welcome
        names.append(welcome.rsplit(" ", 1)[1])
    time.sleep(0.3)
    lines_each = 150
    heard: list[list[str]] = [[] for _ in users]
    closed: list[int] = []

    def listen(i: int) -> None:
        while True:
            try:
                line = users[i].line()
            except OSError:
                return
            if not line:
                closed.append(i)
                return
            if not line.startswith("*"):
                heard[i].append(line)
                if len(heard[i]) == lines_each * (len(users) - 1):
                    return

    def talk(i: int) -> None:
        for n in range(lines_each):
            users[i].say(f"line {n} from {i}")
            time.sleep(random.uniform(0, 0.01))

    listeners = [threading.Thread(target=listen, args=(i,), daemon=True) for i in range(len(users))]
    talkers = [threading.Thread(target=talk, args=(i,), daemon=True) for i in range(len(users))]
    for t in listeners + talkers:
        t.start()
    kills, victim = 0, None
    while any(t.is_alive() for t in talkers) or kills < 5:
        time.sleep(random.uniform(0.3, 0.8))
        pid = server.pid("connect")
        if pid and pid != victim:  # not the one killed last, before its restart
            os.kill(pid, signal.SIGKILL)
            kills, victim = kills + 1, pid
    for t in listeners:
        t.join(30)
    assert not closed, f"users {closed} were disconnected"
    for i, got in enumerate(heard):
        expected = [
            f"{names[j]}: line {n} from {j}"
            for j in range(len(users))
            if j != i
            for n in range(lines_each)
        ]
        by_source = {j: [line for line in got if line.endswith(f" from {j}")] for j in range(5)}
        for j in range(len(users)):
            if j != i:
                want = [line for line in expected if line.endswith(f" from {j}")]
                assert by_source[j] == want, (i, j, len(by_source[j]), by_source[j][:3])
        assert by_source[i] == [] and len(got) == len(expected)
    info = server.wait_for(
        lambda i: i["processes"]["connect"]["restarts"] == kills, what=f"{kills} restarts"
    )
    assert info["counters"]["connections_lost"] == 0


def test_replies_waiting_for_a_slow_reader_survive_connect_kills(start_server) -> None:  # type: ignore[no-untyped-def]
    """A client that reads nothing for a while: its replies fill its
    socket and then wait in connect's memory, their codes kept in the
    outbound queue.  Two kill -9s later it reads every reply once, in order."""
    server: ServerProc = start_server("--queue-bytes", "16777216", "--max-frame", "131072")
    c = EchoClient(server.port, timeout=30)
    payloads = [bytes([i % 256]) * 30_000 for i in range(240)]  # 7.2 MB: more than its socket holds
    sender = threading.Thread(target=lambda: [c.send(p) for p in payloads], daemon=True)
    sender.start()  # it blocks once the server stops reading from it: nothing is read here
    info = server.wait_for(
        lambda i: sum(s["pending_out"] for s in i["streams"].values()) > 0,
        what="replies waiting in connect",
    )
    for _ in range(2):
        victim = server.pid("connect")
        os.kill(victim, signal.SIGKILL)
        info = server.wait_for(
            lambda i, v=victim: (
                i["processes"]["connect"]["pid"] not in (None, v)
                and "took over 1 connection" in server.log().rsplit("started: clients", 1)[-1]
            ),
            what="connect restarted and resumed",
        )
    for i, p in enumerate(payloads):
        got = c.recv()
        sender.join(0 if i < len(payloads) - 1 else 30)
        assert got == p, (i, None if got is None else (len(got), got[:1]))
    assert c.request(b"last") == b"last"
    assert info["counters"]["connections_lost"] == 0
