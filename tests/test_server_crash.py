"""Crash recovery of the running server, under load, with real SIGKILLs.

Every request carries a unique payload; the echo app answers each with the
same payload on the same connection, in order.  "Exactly one reply per
request" is checked by comparing the replies of every connection with its
requests, then sending a last request whose reply must come next: a
duplicated reply would come before it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

from helpers.server import HELPERS, EchoClient, ServerProc, frame

from server.ipc.doorbell import run_dir
from server.proc.adoption import adopt_address


class Load:
    """``conns`` clients, each sending ``per_conn`` requests with up to
    ``window`` in flight, checking every reply as it comes."""

    def __init__(self, port: int, conns: int = 10, per_conn: int = 400, window: int = 8) -> None:
        self.clients = [EchoClient(port, timeout=30) for _ in range(conns)]
        self.per_conn = per_conn
        self.window = window
        self.errors: list[str] = []
        self.replies = 0
        self.threads = [
            threading.Thread(target=self._drive, args=(i,), daemon=True) for i in range(conns)
        ]

    def start(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def _drive(self, i: int) -> None:
        c = self.clients[i]
        want = [b"c%d-r%d" % (i, n) for n in range(self.per_conn)]
        sent = 0
        try:
            for n, expected in enumerate(want):
                while sent < min(len(want), n + self.window):
                    c.send(want[sent])
                    sent += 1
                got = c.recv()
                if got != expected:
                    self.errors.append(f"client {i} reply {n}: got {got!r}, expected {expected!r}")
                    return
                self.replies += 1
            if c.request(b"last") != b"last":
                self.errors.append(f"client {i}: an extra reply came before the last one")
        except OSError as err:
            self.errors.append(f"client {i}: {err!r}")

    def join(self, timeout: float = 60) -> None:
        for t in self.threads:
            t.join(timeout)
        assert not any(t.is_alive() for t in self.threads), "load did not finish"
        assert not self.errors, self.errors[:5]


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


def test_kill_9_logic_under_load_every_request_gets_exactly_one_reply(start_server) -> None:  # type: ignore[no-untyped-def]
    server: ServerProc = start_server()
    load = Load(server.port).start()
    for round_ in range(4):
        time.sleep(0.3)
        info = server.wait_for(lambda i: i["processes"]["logic"]["alive"], what="a logic process")
        victim = info["processes"]["logic"]["pid"]
        kill(victim)
        server.wait_for(
            lambda i, v=victim: (
                i["processes"]["logic"]["pid"] not in (None, v) and i["processes"]["logic"]["alive"]
            ),
            what=f"logic restart {round_ + 1}",
        )
    load.join()
    info = server.info()
    assert info["processes"]["logic"]["restarts"] >= 4
    assert info["processes"]["logic"]["last_start"] == "killed by signal 9"
    assert info["counters"]["replies_dropped"] == 0
    assert info["connections"] == 10
    assert load.replies == 10 * 400
    assert "logic process (pid" in server.log() and "ended: killed by SIGKILL" in server.log()


def test_deaths_between_publishing_and_consuming_lose_and_duplicate_nothing(start_server) -> None:  # type: ignore[no-untyped-def]
    # The riskiest moment: the replies of a step are published, its codes not
    # yet consumed.  The logic process SIGKILLs itself right there now and
    # then (a test-only fault injection: each logic process dies after
    # publishing its 25th step); the journal must finish the step.
    server: ServerProc = start_server(env={"STCP_CRASH_AFTER_PUBLISHING_STEP": "25"})
    load = Load(server.port, conns=6, per_conn=400).start()
    load.join()
    info = server.info()
    assert info["processes"]["logic"]["restarts"] >= 2, "the fault was not injected"
    assert load.replies == 6 * 400
    assert "finished the step a crashed process had published" in server.log()


def test_kill_9_everything_then_run_again_recovers_pending_codes(start_server) -> None:  # type: ignore[no-untyped-def]
    server: ServerProc = start_server("--app", "test_apps:SlowEcho")
    c = EchoClient(server.port)
    for n in range(600):  # 3 s of work for the slow app, in many reads (many codes)
        c.send(b"%d" % n)
        time.sleep(0.001)
    server.wait_for(lambda i: i["queues"]["inbound"]["pending"] > 20, what="a backlog")
    pids = [server.pid(r) for r in ("supervisor", "connect", "logic")]
    for pid in pids:
        kill(pid)
    server.kill_all()  # waits until they are gone
    info = server.info()
    pending, pushed = info["queues"]["inbound"]["pending"], info["queues"]["inbound"]["pushed"]
    assert pending > 20
    assert not any(p["alive"] for p in info["processes"].values())

    again = start_server("--app", "test_apps:SlowEcho", log_name="again.log")
    info = again.wait_for(
        lambda i: i["queues"]["inbound"]["pending"] == 0, timeout=30, what="the backlog processed"
    )
    assert info["start_mode"] == "recover"
    assert info["generation"] == 2
    # every code pushed before the kill, plus the CLOSED of the lost connection
    assert info["codes_processed"] == pushed + 1
    assert info["counters"]["connections_lost"] == 1
    log = again.log()
    assert "start mode RECOVER" in log
    assert f"{pending} codes pending inbound" in log or "codes pending inbound" in log
    assert "were lost" in log
    c.close()


def test_kill_9_connect_restarts_accepts_again_and_keeps_an_idle_client(start_server) -> None:  # type: ignore[no-untyped-def]
    server: ServerProc = start_server()
    old = EchoClient(server.port)
    assert old.request(b"before") == b"before"
    victim = server.pid("connect")
    kill(victim)
    assert old.request(b"still here") == b"still here"  # the same connection, nothing in flight
    server.wait_for(
        lambda i: (
            i["processes"]["connect"]["pid"] not in (None, victim)
            and i["processes"]["connect"]["alive"]
        ),
        what="connect restart",
    )
    new = EchoClient(server.port)
    assert new.request(b"after") == b"after"
    info = server.info()
    assert info["processes"]["connect"]["restarts"] == 1
    assert info["counters"]["connections_lost"] == 0
    assert info["connections"] == 2
    assert "took over 1 connection(s) from the connect process that died" in server.log()


def test_poison_codes_are_set_aside_and_the_server_goes_on(start_server) -> None:  # type: ignore[no-untyped-def]
    server: ServerProc = start_server(
        "--app", "test_apps:Troublesome", "--hang-timeout", "1", "--request-timeout", "1"
    )
    victim = EchoClient(server.port, timeout=30)
    bystander = EchoClient(server.port, timeout=30)
    # One read of the connect process makes one code, and a poison code is
    # set aside with whatever came in the same read: the pauses keep each
    # request in a read of its own.
    assert victim.request(b"one") == b"one"
    victim.send(b"die")  # kills the logic process every time it runs
    time.sleep(0.3)
    assert victim.request(b"two") == b"two"
    victim.send(b"raise")  # the app raises: logged, no reply, nothing else happens
    time.sleep(0.3)
    victim.send(b"hang")  # never returns: killed at --request-timeout, every time
    time.sleep(0.3)
    assert victim.request(b"three") == b"three"
    assert bystander.request(b"fine") == b"fine"
    info = server.info()
    assert info["set_aside"] == 2
    assert info["counters"]["app_errors"] == 1
    assert info["processes"]["logic"]["restarts"] >= 6
    log = server.log()
    assert "poison request" in log and "the app fails on this message" in log
    assert "is slow: one request has run for" in log
    assert "in on_message" in log  # its stack, with the app's function, before each kill


def test_a_graceful_stop_with_a_backlog_delivers_every_reply(start_server) -> None:  # type: ignore[no-untyped-def]
    # 600 requests at 10 ms each: 6 s of work queued when the stop comes,
    # more than the 5 s a stop used to wait before giving up
    server: ServerProc = start_server("--app", "test_apps:TenMsEcho")
    c = EchoClient(server.port, timeout=60)
    requests = [b"%04d" % i + b"x" * 1000 for i in range(600)]
    for i in range(0, 600, 100):
        c.sock.sendall(b"".join(frame(r) for r in requests[i : i + 100]))
    replies: list[bytes | None] = []
    reader = threading.Thread(target=lambda: replies.extend(c.recv() for _ in requests))
    reader.start()
    server.wait_for(lambda i: i["codes_processed"] >= 2, what="the first replies")
    assert server.stop(timeout=60) == 0
    reader.join(30)
    assert replies == requests
    assert "stopped; the segment stays" in server.log()
    assert "nothing moved" not in server.log()
    again: ServerProc = start_server("--app", "test_apps:TenMsEcho", log_name="again.log")
    info = again.info()
    assert info["queues"]["inbound"]["pending"] == 0 and info["queues"]["outbound"]["pending"] == 0


def test_a_changed_option_never_throws_pending_requests_away(start_server, key: int) -> None:  # type: ignore[no-untyped-def]
    server: ServerProc = start_server("--app", "test_apps:SleepyEcho")  # 2 s per request
    c = EchoClient(server.port)
    for n in range(3):  # in reads of their own: three codes, the first one running
        c.send(b"%d" % n)
        time.sleep(0.1)
    server.wait_for(lambda i: i["queues"]["inbound"]["pending"] >= 2, what="pending requests")
    for pid in [server.pid(r) for r in ("supervisor", "connect", "logic")]:
        kill(pid)
    server.kill_all()
    pending = server.info()["queues"]["inbound"]["pending"]
    path = os.pathsep.join([str(HELPERS), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path)
    base = [sys.executable, "-m", "server", "run", "--port", "0", "--key", hex(key)]
    refused = subprocess.run(
        [*base, "--app", "test_apps:SleepyEcho", "--queue-bytes", "1000000"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert refused.returncode == 2 and "listening" not in refused.stdout
    assert "--queue-bytes 4194304 (now 1000000)" in refused.stderr
    assert f"{pending} codes pending inbound" in refused.stderr
    assert "--discard-pending" in refused.stderr
    assert server.info()["queues"]["inbound"]["pending"] == pending  # still there
    fresh = start_server(
        "--app",
        "test_apps:SleepyEcho",
        "--queue-bytes",
        "1000000",
        "--discard-pending",
        log_name="fresh.log",
    )
    info = fresh.info()
    assert info["start_mode"] == "init" and info["queues"]["inbound"]["pending"] == 0
    assert f"--discard-pending: segment 0x{key:08x} was made with --queue-bytes" in fresh.log()


def test_workers_whose_supervisor_died_serve_on_and_the_next_run_adopts_them(start_server) -> None:  # type: ignore[no-untyped-def]
    """kill -9 of the supervisor with requests queued: the workers serve on
    (the client gets every reply on its connection); ``run`` with the same
    key adopts them and their client; a connect kill after that is handled
    by the new supervisor like any other."""
    server: ServerProc = start_server("--app", "test_apps:SleepyEcho")  # 2 s per request
    c = EchoClient(server.port, timeout=30)
    for n in range(3):
        c.send(b"%d" % n)
        time.sleep(0.1)
    server.wait_for(lambda i: i["queues"]["inbound"]["pending"] >= 1, what="pending requests")
    workers = {r: server.pid(r) for r in ("connect", "logic")}
    assert server.proc is not None
    kill(server.proc.pid)
    assert [c.recv() for _ in range(3)] == [b"0", b"1", b"2"]  # unsupervised, same connection
    address = adopt_address(server.key)  # in the private doorbell folder, not where we run
    assert os.path.dirname(address) == run_dir() and os.path.exists(address)
    assert not [f for f in os.listdir() if f.endswith("-adopt.sock")]
    again = ServerProc(server.key, server.log_path, "--app", "test_apps:SleepyEcho").start()
    try:
        assert again.port == server.port  # the listening socket came from the connect process
        info = again.info()
        assert {r: info["processes"][r]["pid"] for r in workers} == workers
        assert info["counters"]["descriptors_held"] == 1
        assert "adopted the logic process" in again.log()  # before it said "listening on"
        again.wait_for(  # the connect process says so once it has handed its sockets over
            lambda i: "adopted by a new supervisor" in again.log(), what="connect's adoption"
        )
        assert c.request(b"adopted") == b"adopted"
        kill(workers["connect"])
        assert c.request(b"after a connect kill") == b"after a connect kill"
        assert again.stop() == 0
        assert not os.path.exists(address)  # taken away once adopted
    finally:
        again.kill_all()
