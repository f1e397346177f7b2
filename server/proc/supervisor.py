"""The supervisor: owns the segment and the listening socket, runs the workers.

``python -m server run`` is this process.  It

1. binds the listening socket (so a busy port fails before anything else);
2. makes the segment: INIT when it is new, RECOVER when an earlier run left
   it (its pending codes are then processed by the new workers);
3. starts the connect process (handing it the listening socket) and the
   logic process, each a fresh interpreter: ``python -m server worker ROLE``;
4. watches them: a worker that exits or is killed is restarted after a
   back-off; one whose heartbeat word stops moving for ``hang_timeout``
   seconds is killed with SIGKILL and restarted.  Each restart and its
   reason go to the log and to the status board (``inspect`` shows them);
5. on SIGINT or SIGTERM stops gracefully: the connect process first (no new
   connections or requests; queued replies are written), then the logic
   process once it has consumed every inbound code.  The segment stays, so
   the next ``run`` recovers.  A second signal stops at once.

The decisions (back-off, hang detection, the phases of a stop) are pure, in
``server.core.supervision``; this module observes the workers and acts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from ..core.config import ServerConfig
from ..core.header import StartMode
from ..core.status import Reason, Role, StatusBoard
from ..core.supervision import Backoff, HangWatch, StopEvent, StopPhase, next_phase
from ..errors import CannotListen, ConfigError, SegmentInUse
from ..ipc.segment import ServerSegment
from ..ipc.shm import SHMFactory
from .common import exit_text

log = logging.getLogger("server.supervisor")

CHECK_INTERVAL = 0.25
_STOPPING = (StopPhase.STOPPING_CONNECT, StopPhase.STOPPING_LOGIC)
STOP_TIMEOUT = 10.0  # per worker, then SIGKILL


@dataclasses.dataclass
class Worker:
    role: Role
    backoff: Backoff = dataclasses.field(default_factory=Backoff)
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    watch: HangWatch | None = None
    restart_at: float | None = 0.0  # None: not to be restarted
    reason: Reason = Reason.FIRST_START
    detail: int = 0
    hung: bool = False
    stop_requested: bool = False

    @property
    def name(self) -> str:
        return self.role.name.lower()


def exit_reason(returncode: int) -> tuple[Reason, int, str]:
    """How a worker ended: the Reason and detail for the status board, and words for the log."""
    if returncode < 0:
        return Reason.KILLED, -returncode, exit_text(returncode)
    return Reason.EXITED, returncode, exit_text(returncode)


def raise_fd_limit(cfg: ServerConfig) -> None:
    """The connect process needs a descriptor per client; raise the soft
    limit when the hard one allows it, otherwise say what to do."""
    needed = cfg.fds_needed
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed or soft == resource.RLIM_INFINITY:
        return
    if hard == resource.RLIM_INFINITY or hard >= needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
        return
    raise ConfigError(
        f"--max-conns {cfg.max_conns} needs {needed} file descriptors but this shell "
        f"allows {hard} (ulimit -n); lower --max-conns or raise the limit",
        option="--max-conns",
        value=cfg.max_conns,
    )


class Supervisor:
    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
        self.workers = {r: Worker(r) for r in (Role.LOGIC, Role.CONNECT)}
        self.stop_phase = StopPhase.RUNNING
        self.stop_signals = 0
        self.phase_deadline = 0.0

    # -- start --------------------------------------------------------------------
    def open(self) -> None:
        cfg = self.cfg
        self.refuse_if_running()
        try:
            self.listener = socket.create_server((cfg.host, cfg.port), backlog=1024)
        except OSError as err:
            raise CannotListen(
                f"cannot listen on {cfg.host}:{cfg.port}: {err.strerror or err}; "
                f"is another server using the port? pick another with --port (0: any free one)",
                host=cfg.host,
                port=cfg.port,
            ) from None
        self.address = self.listener.getsockname()[:2]
        self.seg = ServerSegment.create(cfg)
        self.status: StatusBoard = self.seg.status
        self.beat, self.beat_index = self.status.heartbeat_word(Role.SUPERVISOR)
        recovered = self.seg.start_mode is StartMode.RECOVER
        self.status.started(
            Role.SUPERVISOR, os.getpid(), Reason.RECOVERED if recovered else Reason.FIRST_START
        )
        inbound = self.seg.inbound.stats()
        if recovered:
            log.info(
                "start mode RECOVER (generation %d): %d codes pending inbound, %d outbound, "
                "%d processed before",
                self.seg.shm.generation,
                inbound["pending"],
                self.seg.outbound.stats()["pending"],
                inbound["popped"],
            )
        else:
            log.info("start mode INIT: a new segment 0x%08x", cfg.key)

    def refuse_if_running(self) -> None:
        others = SHMFactory.attached_elsewhere(self.cfg.key)
        if others > 0:
            raise SegmentInUse(
                f"a server is already running with key 0x{self.cfg.key:08x} ({others} process(es) "
                f"attached); stop it first, or use another --key",
                key=self.cfg.key,
                attached=others,
            )

    def spawn(self, w: Worker, now: float) -> None:
        verbose = ["-v"] if log.isEnabledFor(logging.DEBUG) else []
        cmd = [sys.executable, "-m", "server", *verbose, "worker", w.name]
        cmd += ["--config", self.cfg.to_json()]
        fds: tuple[int, ...] = ()
        if w.role is Role.CONNECT:
            fds = (self.listener.fileno(),)
            cmd += ["--listen-fd", str(fds[0])]
        # Its own process group: a Ctrl-C in the terminal reaches only us, and we
        # stop the workers in order.
        w.proc = subprocess.Popen(cmd, pass_fds=fds, stdin=subprocess.DEVNULL, process_group=0)
        w.started_at = now
        w.watch = HangWatch(self.cfg.hang_timeout, now)
        w.restart_at = None
        w.hung = False
        self.status.started(w.role, w.proc.pid, w.reason, w.detail)
        if w.reason is Reason.FIRST_START:
            log.info("started the %s process, pid %d", w.name, w.proc.pid)
        else:
            log.warning(
                "restarted the %s process, pid %d (restart %d; last one: %s)",
                w.name,
                w.proc.pid,
                self.status.restarts(w.role),
                w.reason.describe(w.detail),
            )

    # -- the loop -----------------------------------------------------------------------
    def run(self) -> int:
        self.open()
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        old_fd = signal.set_wakeup_fd(wake_w)
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake the select
        try:
            now = time.monotonic()
            for w in self.workers.values():
                self.spawn(w, now)
            print(f"listening on {self.address[0]}:{self.address[1]}", flush=True)
            while self.stop_phase is not StopPhase.DONE:
                select.select([wake_r], [], [], CHECK_INTERVAL)  # signals write to wake_w
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_r, 512):
                        pass
                self.check(time.monotonic())
            return 0
        finally:
            signal.set_wakeup_fd(old_fd)
            for s, h in handlers.items():
                signal.signal(s, h)
            os.close(wake_r)
            os.close(wake_w)
            self.close()

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stop_signals += 1

    def check(self, now: float) -> None:
        self.beat[self.beat_index] += 1
        if self.stop_signals and self.stop_phase is StopPhase.RUNNING:
            log.info("stop requested: stopping the connect process first")
            self.advance(StopEvent.STOP_REQUESTED, now)
        elif self.stop_signals > 1 and self.stop_phase is not StopPhase.DONE:
            log.warning("second stop request: killing the workers now")
            self.advance(StopEvent.SECOND_REQUEST, now)
            return
        for w in self.workers.values():
            self.check_worker(w, now)
        connect, logic = self.workers[Role.CONNECT], self.workers[Role.LOGIC]
        if self.stop_phase is StopPhase.STOPPING_CONNECT and connect.proc is None:
            log.info("connect process stopped; stopping the logic process once its queue is empty")
            self.advance(StopEvent.CONNECT_EXITED, now)
        elif self.stop_phase is StopPhase.STOPPING_LOGIC and logic.proc is None:
            self.advance(StopEvent.LOGIC_EXITED, now)
        elif self.stop_phase in _STOPPING and now > self.phase_deadline:
            w = connect if self.stop_phase is StopPhase.STOPPING_CONNECT else logic
            log.warning("the %s process did not stop in %.0f s: killing it", w.name, STOP_TIMEOUT)
            self.kill(w)

    def advance(self, event: StopEvent, now: float) -> None:
        """Move the stop to its next phase and do what entering it means."""
        self.stop_phase = next_phase(self.stop_phase, event)
        if self.stop_phase is StopPhase.STOPPING_CONNECT:
            self.begin_stop(self.workers[Role.CONNECT], now)
        elif self.stop_phase is StopPhase.STOPPING_LOGIC:
            self.begin_stop(self.workers[Role.LOGIC], now)
        elif self.stop_phase is StopPhase.DONE and event is StopEvent.SECOND_REQUEST:
            for w in self.workers.values():
                self.kill(w)
                w.restart_at = None

    def begin_stop(self, w: Worker, now: float) -> None:
        w.restart_at = None
        w.stop_requested = True
        self.phase_deadline = now + STOP_TIMEOUT
        if w.proc is not None:
            w.proc.send_signal(signal.SIGTERM)

    def check_worker(self, w: Worker, now: float) -> None:
        if w.proc is not None:
            code = w.proc.poll()
            if code is None:
                assert w.watch is not None
                if not w.hung and w.watch.hung(self.status.heartbeat(w.role), now):
                    w.hung = True
                    log.error(
                        "the %s process (pid %d) is hung: no heartbeat for %.1f s; killing it",
                        w.name,
                        w.proc.pid,
                        w.watch.stalled_for(self.status.heartbeat(w.role), now),
                    )
                    w.proc.kill()
                return
            self.exited(w, code, now)
        if w.restart_at is not None and now >= w.restart_at:
            self.spawn(w, now)

    def exited(self, w: Worker, code: int, now: float) -> None:
        assert w.proc is not None
        pid = w.proc.pid
        w.proc = None
        self.status.stopped(w.role)
        if w.hung:
            reason, detail, text = Reason.HUNG, int(self.cfg.hang_timeout), "hung, and killed"
        else:
            reason, detail, text = exit_reason(code)
        if w.stop_requested or self.stop_phase is StopPhase.DONE:
            if code == 0:
                log.info("the %s process (pid %d) stopped", w.name, pid)
            else:
                log.warning("the %s process (pid %d) ended while stopping: %s", w.name, pid, text)
            return
        w.reason, w.detail = reason, detail
        delay = w.backoff.next_delay(now - w.started_at)
        w.restart_at = now + delay
        log.warning(
            "the %s process (pid %d) ended: %s; restarting it in %.1f s", w.name, pid, text, delay
        )

    def kill(self, w: Worker) -> None:
        if w.proc is not None and w.proc.poll() is None:
            w.proc.kill()

    def close(self) -> None:
        for w in self.workers.values():
            if w.proc is not None:
                self.kill(w)
                w.proc.wait(5)
                w.proc = None
        if hasattr(self, "listener"):
            self.listener.close()
        if hasattr(self, "seg"):
            for role in Role:
                self.status.stopped(role)
            self.seg.detach()
            log.info("stopped; the segment stays for the next run (clean removes it)")
