"""Run the real server (``python -m server run``) from a test, and clients for it.

``ServerProc`` starts the supervisor on a free port with a test's random key,
waits for ``listening on``, and on ``stop()``/``kill_all()`` makes sure no
process of it is left, whatever the test did.  The log goes to a file the
test can read.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from server import SHMFactory
from server.cli.inspect import describe

HELPERS = Path(__file__).parent


class ServerProc:
    def __init__(
        self,
        key: int,
        log_path: Path,
        *args: str,
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
    ) -> None:
        self.extra_env = env or {}
        self.prefix = list(prefix)  # runs the server under it: ["ip", "netns", "exec", NAME]
        self.key = key
        self.log_path = log_path
        self.args = args
        self.pids: set[int] = set()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> ServerProc:
        path = os.pathsep.join([str(HELPERS), os.environ.get("PYTHONPATH", "")])
        env = {**os.environ, "PYTHONPATH": path, **self.extra_env}
        cmd = [sys.executable, "-m", "server", "run", "--port", "0", "--key", hex(self.key)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*self.prefix, *cmd, *self.args], stdout=subprocess.PIPE, stderr=log, env=env
            )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while b"\n" not in line:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                self.kill_all()
                raise AssertionError(f"no 'listening on' within {timeout} s; log:\n{self.log()}")
            chunk = os.read(self.proc.stdout.fileno(), 1024)
            if not chunk:
                raise AssertionError(f"the server exited ({self.proc.wait()}); log:\n{self.log()}")
            line += chunk
        text = line.decode()
        assert "listening on " in text, text
        self.port = int(text.split("listening on ")[1].split()[0].rsplit(":", 1)[1])
        self.pids.add(self.proc.pid)
        self.wait_for(  # alive, and connect past its imports (it logs that, then loops)
            lambda i: (
                all(i["processes"][r]["alive"] for r in ("connect", "logic"))
                and "started: clients on" in self.log()
            )
        )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def info(self) -> dict[str, Any]:
        with SHMFactory.attach(self.key) as shm:
            info = describe(shm)
        for p in info.get("processes", {}).values():
            if p["pid"]:
                self.pids.add(p["pid"])
        return json.loads(json.dumps(info))

    def pid(self, role: str) -> int:
        pid = self.info()["processes"][role]["pid"]
        assert pid, f"no {role} process running"
        return int(pid)

    def wait_for(self, predicate, timeout: float = 20.0, what: str = "") -> dict[str, Any]:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while True:
            info = self.info()
            if predicate(info):
                return info
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out waiting for {what or predicate}: {info}\n{self.log()}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, as a user's Ctrl-C would; returns the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        if self.proc.stdout:
            self.proc.stdout.close()
        return code

    def kill_all(self) -> None:
        """SIGKILL the supervisor, then every worker of this key, until none
        is left.  The supervisor goes first and alone: killed after a worker,
        it could start a new one in between, not yet named by its command
        line, and leave it behind."""
        with contextlib.suppress(Exception):
            self.info()
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            with contextlib.suppress(Exception):
                self.proc.wait(5)
            if self.proc.stdout:
                self.proc.stdout.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # workers are not our children: wait until gone
            alive = set()
            for pid in self.pids | workers_of(self.key):
                try:
                    os.kill(pid, signal.SIGKILL)
                    alive.add(pid)
                except ProcessLookupError:
                    continue
            self.pids = alive
            if not alive:
                break
            time.sleep(0.02)


def workers_of(key: int) -> set[int]:
    """Pids of the worker processes of the server with ``key`` (their
    command line carries the configuration, key included)."""
    found = set()
    mark = f'"key": {key},'.encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if mark in (entry / "cmdline").read_bytes():
                    found.add(int(entry.name))
            except OSError:
                continue
    return found


# -- clients --------------------------------------------------------------------


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


class EchoClient:
    """A blocking length-framed client."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, payload: bytes) -> None:
        self.sock.sendall(frame(payload))

    def _fill(self, n: int) -> bool:
        while len(self.buf) < n:
            data = self.sock.recv(1 << 20)
            if not data:
                return False
            self.buf += data
        return True

    def recv(self) -> bytes | None:
        """The next frame; None when the server closed the connection."""
        if not self._fill(4):
            return None
        n = struct.unpack(">I", self.buf[:4])[0]
        if not self._fill(4 + n):
            return None
        payload, self.buf = self.buf[4 : 4 + n], self.buf[4 + n :]
        return payload

    def request(self, payload: bytes) -> bytes | None:
        self.send(payload)
        return self.recv()

    def closed_by_server(self, timeout: float = 10.0) -> bool:
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


class LineClient:
    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.file = self.sock.makefile("rb")

    def say(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\n")

    def line(self) -> str:
        return self.file.readline().decode().rstrip("\n")

    def close(self) -> None:
        self.file.close()
        self.sock.close()
