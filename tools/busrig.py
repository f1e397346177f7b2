"""A rig for the bus: relay programs, configurations, numbered messages
(``tests/test_bus_*.py`` and ``tools.chaos_bus``)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

from server import SharedQueue
from server.bus import Bus, load_bus_config
from server.core.status import Role
from server.errors import ServerError
from server.ipc.shm import SHMFactory
from server.proc.relaysup import open_board

ROOT = Path(__file__).resolve().parents[2]


def write_config(
    path: Path,
    listens: dict[str, str],
    endpoints: dict[str, str],
    settings: str = "inbox_bytes = 65536\nack_every = 16\nack_ms = 5\n",
) -> str:
    """A bus.toml with a random base key; returns its path.  The default
    ``settings`` make small queues that fill (back-pressure) and frequent
    ACKs, for the tests; "" keeps the defaults of a real bus."""
    hosts = "".join(f'[hosts.{h}]\nlisten = "{addr}"\n\n' for h, addr in listens.items())
    routes = "".join(f'"{a}" = "{h}"\n' for a, h in endpoints.items())
    path.write_text(
        f"[bus]\nkey = {random.randint(0x1000_0000, 0x7FFF_FFFF)}\n{settings}\n"
        f"{hosts}[endpoints]\n{routes}"
    )
    return str(path)


def remove_queues(config: str) -> None:
    """Every queue and relay board of the bus (the relays are stopped)."""
    cfg = load_bus_config(config)
    for address in cfg.routes:
        SharedQueue.remove(cfg.inbox_key(address))
    for s in cfg.hosts:
        SHMFactory.remove(cfg.relay_key(s))
        for t in cfg.hosts:
            if s != t:
                SharedQueue.remove(cfg.outbox_key(s, t))


def relay_pid(config: str, host: str, timeout: float = 10.0) -> int:
    """The pid of ``host``'s relay process (the one its supervisor runs),
    once there is one."""
    cfg = load_bus_config(config)
    deadline = time.monotonic() + timeout
    while True:
        pid = 0
        if SHMFactory.exists(cfg.relay_key(host)):
            try:
                shm, status, _links = open_board(cfg, host, owner=False)
            except ServerError:  # its supervisor is making it right now
                pass
            else:
                try:
                    pid = status.pid(Role.RELAY)
                finally:
                    shm.detach()
        if pid:
            return pid
        if time.monotonic() > deadline:
            raise TimeoutError(f"host {host}'s relay did not start within {timeout} s")
        time.sleep(0.02)


class Relays:
    """One relay program per host; ``prefix`` runs it inside that host."""

    def __init__(
        self,
        config: str,
        prefixes: dict[str, list[str]] | None = None,
        options: tuple[str, ...] = (),
    ) -> None:
        self.config = config
        self.prefixes = prefixes or {}
        self.options = list(options)  # more options of ``server relay``
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}

    def start(self, host: str) -> None:
        log = Path(self.config).with_name(f"relay-{host}.log")
        self.logs[host] = log
        cmd = [sys.executable, "-m", "server", "relay", "--config", self.config, "--host", host]
        cmd += self.options
        with open(log, "ab") as out:
            self.procs[host] = subprocess.Popen(
                self.prefixes.get(host, []) + cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
            )

    def kill(self, host: str) -> None:
        """SIGKILL the whole relay program (its supervisor: the kernel then
        kills the relay it ran); ``start`` starts it again."""
        proc = self.procs[host]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def kill_relay(self, host: str) -> int:
        """SIGKILL the relay process only: its supervisor restarts it."""
        pid = relay_pid(self.config, host)
        os.kill(pid, signal.SIGKILL)
        return pid

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def tracebacks(self) -> str:
        text = "".join(p.read_text() for p in self.logs.values())
        return text[-3000:] if "Traceback" in text else ""


def numbered(i: int, source: str = "") -> bytes:
    body = b"%s%d:" % (source.encode(), i) + b"x" * (i % 50)
    return body + zlib.crc32(body).to_bytes(4, "big")


SENDER = """
import sys, time, zlib
from server.bus import Bus
config, source, target, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
rate = float(sys.argv[5])
start = time.monotonic()
with Bus.open(source, config=config) as bus:
    for i in range(n):
        body = b"%s%d:" % (source.encode(), i) + b"x" * (i % 50)
        assert bus.send(target, body + zlib.crc32(body).to_bytes(4, "big"), timeout=60)
        if rate and i % 1000 == 999:  # paced: so many per second at most
            time.sleep(max(0.0, start + (i + 1) / rate - time.monotonic()))
"""


def start_sender(
    config: str, source: str, target: str, n: int, rate: float = 0
) -> subprocess.Popen[bytes]:
    """A sender program: ``n`` numbered messages, at most ``rate`` per second (0: no limit)."""
    return subprocess.Popen(
        [sys.executable, "-c", SENDER, config, source, target, str(n), str(rate)], cwd=ROOT
    )


def receive(b: Bus, source: str, n: int, timeout: float) -> None:
    """Exactly ``n`` numbered messages from ``source``, in order (and only from it)."""
    for i in range(n):
        got = b.recv(timeout=timeout)
        assert got == (source, numbered(i, source)), f"message {i} from {source}: got {got!r}"
