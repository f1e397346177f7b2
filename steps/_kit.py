"""The stage the demos run on (not a lesson: read the steps first).

A step's demo is a *driver* that tells the story and plays the clients, plus
the processes it starts.  Only the driver writes to the terminal.  A child's
output comes through a pipe and is relayed, labelled, at the moments the
driver waits for it (``Child.expect``), so the story prints in the same
order on every run; that is what lets ``tests/steps`` compare it with a
recorded transcript.

Whatever a demo creates it removes: ``Stage`` kills the processes it started
and removes the segments whose keys it handed out when the demo ends, also
on Ctrl-C (the demo then exits with 130) or on an error.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

import sysv_ipc

from server.ipc.doorbell import remove_doorbells
from server.proc.common import Parent, exit_text

EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 130


class DemoError(Exception):
    """The demo did not go as the lesson says (a child said something else,
    or nothing in time)."""


def say(*lines: str) -> None:
    """Narrate: print and flush at once (the output may be a pipe)."""
    for line in lines:
        print(line, flush=True)


def listen(port: int = 0) -> socket.socket:
    """A listening socket on 127.0.0.1 (port 0: a free one)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as err:
        sock.close()
        raise DemoError(
            f"cannot listen on 127.0.0.1:{port}: {err.strerror}; try --port 0"
        ) from None
    sock.listen(64)
    return sock


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def background(target: Callable[..., object], *args: object) -> threading.Thread:
    """Start a daemon thread that never receives SIGINT or SIGTERM.

    The kernel hands a signal to any thread that does not block it.  If a
    helper thread took Ctrl-C, the main thread would stay blocked in its
    ``recv`` or ``wait`` and learn of it only later, perhaps on its way
    into a clean-up, which the KeyboardInterrupt would then cut short."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()  # the new thread inherits the blocked mask
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return thread


def segment_exists(key: int) -> bool:
    try:
        sysv_ipc.SharedMemory(key, 0).detach()
    except sysv_ipc.ExistentialError:
        return False
    return True


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Child:
    """A process of the demo: ``python -m MODULE ARGS...``, its output
    (stdout and stderr) read line by line into a queue by a thread."""

    def __init__(
        self,
        label: str,
        argv: Sequence[str],
        *,
        relay: bool = True,
        tidy: Callable[[str], str] = str,
        env: dict[str, str] | None = None,
    ) -> None:
        """``relay=False`` shows only the lines ``expect`` matches; ``tidy``
        rewrites each line before it is matched and shown; ``env``: variables
        to add to the child's environment."""
        self.label = label
        self.relay_lines = relay
        self.tidy = tidy
        self.proc = subprocess.Popen(
            [sys.executable, "-u", *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=None if env is None else {**os.environ, **env},
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        background(self._read)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(self.tidy(line.rstrip("\n")))
        self._lines.put(None)

    def show(self, line: str) -> None:
        say(f"    [{self.label}] {line}")

    def expect(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        """Read (and relay) lines until one matches ``pattern``."""
        regex = re.compile(pattern)
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                raise DemoError(
                    f"the {self.label} process said nothing matching {pattern!r} in {timeout} s"
                ) from None
            if line is None:
                self._lines.put(None)
                status = self.proc.wait()
                raise DemoError(
                    f"the {self.label} process {exit_text(status)} before saying {pattern!r}"
                )
            match = regex.search(line)
            if self.relay_lines or match:
                self.show(line)
            if match:
                return match

    def finish(self, timeout: float = 15.0) -> int:
        """Wait for the process to end; relay what it still said."""
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise DemoError(f"the {self.label} process did not end in {timeout} s") from None
        try:
            while (line := self._lines.get(timeout=5)) is not None:
                if self.relay_lines:
                    self.show(line)
        except queue.Empty:  # a process it started still holds the pipe open
            return status
        self._lines.put(None)
        return status

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)

    def kill(self) -> int:
        """SIGKILL: the process gets no chance to clean up anything."""
        self.signal(signal.SIGKILL)
        return self.finish()


class Stage:
    """The processes and segments of one demo; all gone at ``__exit__``."""

    def __init__(self) -> None:
        self.children: list[Child] = []
        self.keys: list[int] = []
        self._closing = self._interrupted = self._starting = False

    def start(self, label: str, module: str, *args: str, **options: Any) -> Child:
        # A Ctrl-C between the fork and the append would leave a child that
        # no one stops: it is held back until the child is on the list.
        self._starting = True
        try:
            child = Child(label, ["-m", module, *args], **options)
            self.children.append(child)
        finally:
            self._starting = False
        if self._interrupted and not self._closing:
            raise KeyboardInterrupt
        return child

    def new_key(self) -> int:
        """A random key nobody uses; its segment is removed at the end."""
        while True:
            key = random.randint(0x1000_0000, 0x7FFF_FFFF)
            if not segment_exists(key):
                self.keys.append(key)
                return key

    def __enter__(self) -> Stage:
        self._closing = self._interrupted = self._starting = False
        self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        # Ctrl-C stops the demo, but must not cut its clean-up short.  The
        # signal may be handled at the very first instruction of __exit__
        # (when an error, say a connection reset by a child that took the
        # same Ctrl-C, is already on its way out), hence the frame check.
        if self._closing or self._starting or (frame is not None and frame.f_code is _EXIT_CODE):
            self._interrupted = True
            return
        raise KeyboardInterrupt

    def __exit__(self, *exc: object) -> None:
        self._closing = True
        try:
            for child in self.children:  # SIGTERM: a server stops gracefully
                child.signal(signal.SIGTERM)
            for child in self.children:
                try:
                    _reap(child.proc, 10)
                except subprocess.TimeoutExpired:
                    child.proc.kill()
                    _reap(child.proc, 10)
            for key in self.keys:
                with contextlib.suppress(sysv_ipc.ExistentialError):
                    seg = sysv_ipc.SharedMemory(key, 0)
                    seg.remove()
                    seg.detach()
                remove_doorbells(key)  # a killed consumer leaves its doorbell's file
        finally:
            signal.signal(signal.SIGINT, self._previous)
        if self._interrupted:
            raise KeyboardInterrupt from None


_EXIT_CODE = Stage.__exit__.__code__


def _reap(proc: subprocess.Popen[str], timeout: float) -> None:
    """``proc.wait(timeout)`` without Popen's lock: a Ctrl-C that lands
    inside ``Popen.poll`` can leave that lock taken, and ``wait`` would then
    never see the child end."""
    deadline = time.monotonic() + timeout
    while proc.returncode is None:
        try:
            pid, status = os.waitpid(proc.pid, os.WNOHANG)
        except ChildProcessError:  # reaped already, by Popen
            return
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return
        if time.monotonic() > deadline:
            raise subprocess.TimeoutExpired(proc.args, timeout)
        time.sleep(0.02)


def roles_parser(
    prog: str, *roles: str
) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """A step's options: none runs the demo; ``ROLE --key KEY`` runs one of
    the processes the demo starts (on the segment the demo chose)."""
    parser = argparse.ArgumentParser(prog=prog, description="Without a ROLE: run the demo.")
    sub = parser.add_subparsers(dest="role", metavar="ROLE")
    made = {}
    for role in roles:
        made[role] = sub.add_parser(role, help=f"the demo's {role} process (the demo starts it)")
        made[role].add_argument("--key", type=lambda text: int(text, 0), required=True)
    return parser, made


def run(main: Callable[[list[str]], int], argv: list[str] | None = None) -> int:
    """Run a step's ``main``; Ctrl-C and demo errors end it with a clear word."""
    try:
        return main(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:
        say("", "interrupted: the demo's processes are stopped and its segments removed")
        return EXIT_INTERRUPTED
    except DemoError as err:
        print(f"Error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as err:  # a socket timed out or was refused, a segment vanished
        print(f"Error: the demo failed: {err!r}", file=sys.stderr)
        return EXIT_ERROR


def child_run(main: Callable[..., Any], *args: Any) -> int:
    """Entry of a child process: Ctrl-C (sent to the whole terminal group)
    and SIGTERM end it quietly; the driver cleans up."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        main(*args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return EXIT_OK


def parent_alive() -> bool:
    """False once the driver that started us is gone (we were re-parented):
    a child waiting for work stops then instead of living on as an orphan."""
    return not _PARENT.gone()


_PARENT = Parent()
