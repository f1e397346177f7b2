"""``python -m server relay``: a supervisor, and the relay process it runs.

The command is the supervisor.  It

1. makes the relay's small segment (key ``config.relay_key(host)``, mode
   0600): a status board (``server.core.status``, roles supervisor and
   relay) and a link board (``server.core.linkboard``).  They hold numbers
   only, so a corrupt one is re-made with a warning; the messages
   themselves live in the inboxes and outboxes;
2. binds the relay's listening address, so a busy address fails at once
   with a clear error, and a restarted relay takes over the same socket;
3. starts the relay, ``python -m server relay --listen-fd N ...`` (a fresh
   interpreter in its own process group, killed by the kernel if the
   supervisor dies: ``PR_SET_PDEATHSIG``), and watches it four times a
   second with the watchdog of the server (``server.core.watchdog``): a
   dead relay is restarted (at once if it had made progress, with back-off
   in a crash loop), a hung one (no heartbeat for ``--hang-timeout``) has
   its Python stack written to the log and is killed, then restarted.  Each
   restart and its reason go to the log and to the board;
4. on SIGTERM or SIGINT stops the relay (it acknowledges what it applied
   and closes its links), then itself.  A second signal kills it at once.

A relay killed at any moment loses nothing: what it had not handed on is
still in shared memory (``server.proc.relay``).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from ..core.busconfig import BusConfig
from ..core.linkboard import LinkBoard
from ..core.placed import InSegment
from ..core.status import RELAY_BOARD, Reason, Role, StatusBoard, WorkerState
from ..core.watchdog import Act, Action, Seen, Watchdog
from ..ipc.segment import layout_of, segment_size
from ..ipc.shm import SharedMemory, SHMFactory
from .common import (
    PARENT_ENV,
    STACK_SIGNAL,
    Heartbeat,
    drain,
    enable_stack_dumps,
    exit_text,
    signal_name,
    signals_wake,
)
from .memory import keep_freed_memory
from .relay import Relay, bind_relay
from .workers import exit_reason, frozen

log = logging.getLogger("server.relay")

CHECK_INTERVAL = 0.25
HANG_TIMEOUT = 5.0
STOP_TIMEOUT = 10.0
BIND_PATIENCE = 3.0  # a relay of a supervisor that was just killed may still hold the address
LAYOUT: list[tuple[str, type[InSegment]]] = [(RELAY_BOARD, StatusBoard), ("links", LinkBoard)]
PR_SET_PDEATHSIG = 1


def board_layout() -> list[tuple[str, str, int]]:
    return layout_of([(name, cls, 0) for name, cls in LAYOUT])


def open_board(config: BusConfig, host: str, *, owner: bool) -> tuple[SharedMemory, Any, Any]:
    """The relay's segment and its two boards: made or recovered by the
    supervisor (``owner``), attached by the relay and the inspector."""
    key = config.relay_key(host)
    if owner:
        shm = SHMFactory.create_product(key, segment_size(board_layout()), board_layout())
    else:
        shm = SHMFactory.attach(key)
    try:
        status = StatusBoard.place(shm, RELAY_BOARD)
        links = LinkBoard.place(shm, "links")
        if owner:
            shm.check_all_placed()
    except BaseException:
        shm.detach()
        raise
    return shm, status, links


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL us when the supervisor dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class RelaySupervisor:
    def __init__(self, config: BusConfig, host: str, hang_timeout: float = HANG_TIMEOUT) -> None:
        self.config = config
        self.host = config.host(host).name
        self.watchdog = Watchdog(hang_timeout, float("inf"), signal_name=signal_name)
        self.proc: subprocess.Popen[bytes] | None = None
        self.restart_at: float | None = 0.0
        self.reason, self.detail = Reason.FIRST_START, 0
        self.signals = 0

    def run(self) -> int:
        self.listener = bind_relay(self.config, self.host, BIND_PATIENCE)
        try:
            self.shm, self.status, _links = open_board(self.config, self.host, owner=True)
        except BaseException:
            self.listener.close()
            raise
        self.status.supervisor_started()
        self.status.started(Role.SUPERVISOR, os.getpid(), Reason.FIRST_START)
        self.meter = self.status.meter(Role.SUPERVISOR)
        handlers: dict[int, Any] = {s: self._on_signal for s in (signal.SIGINT, signal.SIGTERM)}
        handlers[signal.SIGCHLD] = lambda *_: None  # only to wake the select
        try:
            with signals_wake(handlers) as wake:
                while not self._stopped():
                    select.select([wake], [], [], CHECK_INTERVAL)
                    drain(wake)
                    self.check(time.monotonic())
            return 0
        finally:
            self.close()

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.signals += 1

    def _stopped(self) -> bool:
        return bool(self.signals) and self.proc is None

    def check(self, now: float) -> None:
        self.meter.heartbeat[0] += 1
        self.meter.beat_at[0] = int(now * 1000)
        if self.signals:
            self.stop(now)
            return
        if self.proc is None:
            if self.restart_at is not None and now >= self.restart_at:
                self.spawn(now)
            return
        code = self.proc.poll()
        seen = Seen(
            returncode=code,
            heartbeat=self.status.heartbeat(Role.RELAY),
            progress=self.status.progress(Role.RELAY),
            frozen=frozen(self.proc.pid) if code is None else False,
        )
        for action in self.watchdog.check(now, {Role.RELAY: seen}):
            self.carry_out(action, now)

    def spawn(self, now: float) -> None:
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        cmd = [sys.executable, "-m", "server", "--log-level", str(level), "relay"]
        cmd += ["--config", self.config.path, "--host", self.host]
        cmd += ["--listen-fd", str(self.listener.fileno())]
        env = dict(os.environ, **{PARENT_ENV: str(os.getpid())})
        self.proc = subprocess.Popen(
            cmd,
            pass_fds=[self.listener.fileno()],
            stdin=subprocess.DEVNULL,
            process_group=0,
            env=env,
            preexec_fn=die_with_parent,
        )
        self.restart_at = None
        self.status.started(Role.RELAY, self.proc.pid, self.reason, self.detail)
        self.watchdog.started(Role.RELAY, now, self.status.progress(Role.RELAY))
        if self.reason is Reason.FIRST_START:
            log.info("started the relay of host %s, pid %d", self.host, self.proc.pid)
        else:
            log.warning(
                "restarted the relay of host %s, pid %d (restart %d; last one: %s)",
                self.host,
                self.proc.pid,
                self.status.restarts(Role.RELAY),
                self.reason.describe(self.detail),
            )

    def carry_out(self, action: Action, now: float) -> None:
        assert self.proc is not None
        pid = self.proc.pid
        if action.act is Act.DUMP:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, STACK_SIGNAL)
            log.error(
                "the relay (pid %d) is %s; its Python stack follows, then it is killed",
                pid,
                action.reason,
            )
        elif action.act is Act.KILL:
            log.error("killing the relay (pid %d): %s", pid, action.reason)
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        elif action.act in (Act.RESTART, Act.REINIT):
            code = self.proc.poll()
            self.proc = None
            if action.verdict is not None and action.verdict.name == "HUNG":
                self.reason, self.detail = Reason.HUNG, int(self.watchdog.hang_timeout)
            else:
                self.reason, self.detail, _ = exit_reason(code)
            self.restart_at = now + action.delay
            state = WorkerState.BACKING_OFF if action.delay else WorkerState.RESTARTING
            self.status.stopped(Role.RELAY, state)
            when = (
                f"in {action.delay:.1f} s (no progress since its start)" if action.delay else "now"
            )
            log.warning("the relay (pid %d) ended: %s; restarting it %s", pid, action.reason, when)
            if not action.delay:
                self.spawn(now)

    def stop(self, now: float) -> None:
        """Stop the relay: SIGTERM once; a second signal or ``STOP_TIMEOUT``: SIGKILL."""
        proc = self.proc
        if proc is None:
            return
        if not hasattr(self, "stop_at"):
            log.info("relay of host %s: stop requested", self.host)
            self.stop_at = now + STOP_TIMEOUT
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        elif self.signals > 1 or now >= self.stop_at:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        code = proc.poll()
        if code is not None:
            self.proc = None
            self.status.stopped(Role.RELAY)
            if code == 0:
                log.info("the relay of host %s (pid %d) stopped", self.host, proc.pid)
            else:
                log.warning(
                    "the relay (pid %d) ended while stopping: %s", proc.pid, exit_text(code)
                )

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.listener.close()
        if hasattr(self, "shm"):
            self.status.stopped(Role.RELAY)
            self.status.stopped(Role.SUPERVISOR)
            self.shm.detach()


def run_relay(
    config: BusConfig, host: str, listen_fd: int | None = None, hang_timeout: float = HANG_TIMEOUT
) -> int:
    """The command: without ``listen_fd`` the supervisor
    (``server.proc.relaysup``), with it the relay that supervisor runs."""
    if listen_fd is None:
        return RelaySupervisor(config, host, hang_timeout).run()
    enable_stack_dumps()
    keep_freed_memory()  # batches of 256 KiB every turn (server.proc.memory)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when we stop
    shm, status, links = open_board(config, host, owner=False)
    heartbeat = Heartbeat(status.meter(Role.RELAY)).start()
    try:
        listener = socket.socket(fileno=listen_fd)
        Relay(config, host, listener=listener, links=links, heartbeat=heartbeat).run()
    finally:
        heartbeat.stop()
        shm.detach()
    return 0
