"""Chaos for the chat room across hosts: every line exactly once to every other user.

    python -m tools.chaos_chat                       # 2 hosts, 2 users each, 300 lines each
    python -m tools.chaos_chat --lines 1000 --kills 12

It makes two hosts (network namespaces, else loopback addresses: it says
which), runs in each a bus relay and a chat server on the bus
(``python -m server run --app chat --bus bus.toml --endpoint chat@hN``),
and ``--users`` chat users per server, each a program of its own in its
host, each sending ``--lines`` numbered lines.  Meanwhile it ``SIGKILL``s
``--kills`` times, in turn: a relay process (its supervisor restarts it),
a whole relay program (started again here) and a logic process of a chat
server (its supervisor restarts it).  Then every user must have received
every other user's lines exactly once and in order: the local ones as
``userN: text``, the others' as ``[chat@hN] userN: text``.  Exit status 1
otherwise.  Bounded in time (``--limit``); whatever it made is removed.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from server.cli.inspect import describe
from server.ipc.shm import SHMFactory
from tools.busrig import ROOT, Relays, remove_queues, write_config
from tools.hosts import make_hosts

PORT = 7311
CHAT_PORT = 7411

USER = r"""
import os, select, socket, sys, time
port, name, go, lines, rate, expect, limit = sys.argv[1:4] + list(map(float, sys.argv[4:]))
sock = socket.create_connection(("127.0.0.1", int(port)))
got, buf, sent, out = 0, b"", 0, sys.stdout
deadline = time.monotonic() + limit
start = None
while time.monotonic() < deadline and (sent < lines or got < expect):
    if start is None and os.path.exists(go):  # every user is in the room: begin
        start = time.monotonic()
    readable, _, _ = select.select([sock], [], [], 0.05 if sent < lines else 0.5)
    if readable:
        data = sock.recv(65536)
        if not data:
            break
        *complete, buf = (buf + data).split(b"\n")
        for line in complete:
            text = line.decode()
            out.write(text + "\n")
            body = text.rsplit(": ", 1)[-1]
            got += body.startswith("u") and "-" in body
    if start is not None:
        while sent < min(lines, int((time.monotonic() - start) * rate) + 1):
            sock.sendall(b"u%s-%d\n" % (name.encode(), sent))
            sent += 1
out.flush()
"""


def _pid_of_logic(key: int) -> int:
    with SHMFactory.attach(key) as shm:
        return int(describe(shm)["processes"]["logic"]["pid"] or 0)


def check(received: dict[str, list[str]], users: list[str], lines: int) -> list[str]:
    """Every user got every other user's lines once, in order (pure)."""
    problems = []
    for me, texts in received.items():
        seen: dict[str, list[int]] = {u: [] for u in users if u != me}
        for text in texts:
            body = text.rsplit(": ", 1)[-1]
            if not body.startswith("u") or "-" not in body:
                continue  # welcome, joined, left
            who, _, n = body[1:].partition("-")
            if who == me:
                problems.append(f"{me} got its own line back: {text!r}")
            elif who in seen:
                seen[who].append(int(n))
        for who, numbers in seen.items():
            if numbers != list(range(lines)):
                dup = len(numbers) - len(set(numbers))
                missing = sorted(set(range(lines)) - set(numbers))
                problems.append(
                    f"{me} got {len(numbers)} of {who}'s {lines} lines ({dup} twice, missing "
                    f"{missing[:5]}{'...' if len(missing) > 5 else ''}; in order: "
                    f"{numbers == sorted(numbers)})"
                )
    return problems


def run(users_per_host: int, lines: int, kills: int, limit: float) -> dict[str, Any]:
    hosts = make_hosts(2)
    names = ["h1", "h2"]
    netns = hosts.mode == "netns"
    port = PORT if netns else 20000 + random.randint(0, 20000)
    listens = {h: f"{ip}:{port}" for h, ip in zip(names, hosts.addresses, strict=True)}
    folder = Path(tempfile.mkdtemp(prefix="stcp-chat-chaos-"))
    config = write_config(folder / "bus.toml", listens, {f"chat@{h}": h for h in names})
    relays = Relays(config, {h: hosts.prefix(i) for i, h in enumerate(names)})
    keys = {h: random.randint(0x1000_0000, 0x7FFF_FFFF) for h in names}
    ports = {h: CHAT_PORT if netns else port + 1 + i for i, h in enumerate(names)}
    servers: dict[str, subprocess.Popen[bytes]] = {}
    chatters: dict[str, subprocess.Popen[bytes]] = {}
    outputs: dict[str, Path] = {}
    users = [f"{h}{j}" for h in names for j in range(users_per_host)]
    done = {"relay process": 0, "relay program": 0, "logic process": 0}
    errors: list[str] = []
    start = time.monotonic()
    try:
        for i, h in enumerate(names):
            relays.start(h)
            cmd = [sys.executable, "-m", "server", "run", "--app", "chat", "--bus", config]
            cmd += ["--endpoint", f"chat@{h}", "--port", str(ports[h]), "--key", hex(keys[h])]
            cmd += ["--queue-bytes", "262144"]
            with open(folder / f"server-{h}.log", "ab") as log:
                servers[h] = subprocess.Popen(
                    hosts.prefix(i) + cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
                )
        for h in names:
            _wait_listening(folder / f"server-{h}.log", servers[h])
        lasting = 2.0 + kills * 0.7
        rate = lines / lasting
        expect = lines * (len(users) - 1)
        for u in users:
            i = names.index(u[:2])
            outputs[u] = folder / f"user-{u}.txt"
            args = [ports[u[:2]], u, folder / "go", lines, rate, expect, limit]
            with open(outputs[u], "wb") as out:
                chatters[u] = subprocess.Popen(
                    hosts.prefix(i) + [sys.executable, "-c", USER, *map(str, args)],
                    cwd=ROOT,
                    stdout=out,
                )
        deadline = time.monotonic() + 20
        while not all(b"welcome" in outputs[u].read_bytes() for u in users):
            if time.monotonic() > deadline:
                raise RuntimeError("the users could not join their rooms")
            time.sleep(0.05)
        (folder / "go").touch()  # every user is in: they begin
        kinds = ["relay process", "relay program", "logic process"]
        for k in range(kills):
            time.sleep(random.uniform(0.2, 0.5))
            h = random.choice(names)
            kind = kinds[k % 3]
            if kind == "relay process":
                relays.kill_relay(h)
            elif kind == "relay program":
                relays.kill(h)
                time.sleep(random.uniform(0.0, 0.4))
                relays.start(h)
            else:
                pid = _pid_of_logic(keys[h])
                if pid:
                    subprocess.run(["kill", "-9", str(pid)], check=False)
            done[kind] += 1
        for u, proc in chatters.items():
            try:
                proc.wait(max(1.0, limit - (time.monotonic() - start)))
            except subprocess.TimeoutExpired:
                errors.append(f"user {u} did not finish within {limit} s")
        received = {u: outputs[u].read_text().splitlines() for u in users}
        errors += check(received, users, lines)
        for h, server in servers.items():
            if server.poll() is not None:
                errors.append(f"the chat server of {h} ended: {server.returncode}")
    finally:
        for proc in chatters.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for server in servers.values():
            if server.poll() is None:
                server.terminate()
        for server in servers.values():
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        relays.stop()
        remove_queues(config)
        for key in keys.values():
            _clean(key)
        hosts.remove()
        logs = "".join(p.read_text(errors="replace") for p in folder.glob("*.log"))
        if "Traceback" in logs:
            errors.append("a traceback in the logs")
        if not errors:
            shutil.rmtree(folder, ignore_errors=True)
    return {
        "hosts": f"{hosts.mode} {hosts.addresses}",
        "users": len(users),
        "lines per user": lines,
        "kills": done,
        "seconds": round(time.monotonic() - start, 1),
        "ok": not errors,
        "problems": errors + ([f"the logs are in {folder}"] if errors else []),
    }


def _wait_listening(log: Path, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while b"listening on" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the chat server did not start: {log.read_text()[-2000:]}")
        time.sleep(0.05)


def _clean(key: int) -> None:
    subprocess.run(
        [sys.executable, "-m", "server", "clean", "--key", hex(key)],
        cwd=ROOT,
        capture_output=True,
        timeout=30,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=2, help="users per server (2)")
    parser.add_argument("--lines", type=int, default=300, help="lines each user sends (300)")
    parser.add_argument("--kills", type=int, default=9, help="kills, of three kinds in turn (9)")
    parser.add_argument("--limit", type=float, default=120, help="seconds for the run (120)")
    a = parser.parse_args(argv)
    report = run(a.users, a.lines, a.kills, a.limit)
    width = max(map(len, report))
    for k, v in report.items():
        print(f"{k:>{width}}: {v}")
    print("ok" if report["ok"] else "FAILED")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
