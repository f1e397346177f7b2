"""The supervisor: owns the segment and the listening socket, runs the workers.

``python -m server run`` is this process.  It

1. binds the listening socket (so a busy port fails before anything else),
   or adopts the workers of a supervisor that was killed, which hand it
   theirs and their clients (``server.proc.adoption``);
2. makes the segment: INIT when it is new, RECOVER when an earlier run left
   it (its pending codes are then processed by the new workers); a segment
   found corrupt is saved to a file and re-initialised, with a warning;
3. starts the connect process (handing it the listening socket) and the
   logic process, each a fresh interpreter: ``python -m server worker ROLE``;
4. watches them four times a second and lets the watchdog decide
   (``server.core.watchdog``): a dead worker is restarted (at once if it had
   made progress), a hung or slow one has its Python stack written to the
   log and is killed, a worker that twice found the segment corrupt gets it
   saved and re-initialised.  Each restart and its reason go to the log and
   to the status board (``inspect`` shows them), and to systemd when it
   watches us (``server.proc.notify``);
5. on SIGINT or SIGTERM stops gracefully (the phases are in
   ``server.core.supervision``): the connect process first (no new
   connections or requests; queued replies are written), then the logic
   process once it has consumed every inbound code.  The segment stays, so
   the next ``run`` recovers.  A second signal stops at once;
6. on SIGHUP restarts both workers gracefully with the code on disk, the
   clients handed over to the new connect process (``server.proc.reload``).
"""

from __future__ import annotations

import logging
import os
import select
import shutil
import signal
import socket
import time
from typing import Any

from ..core.config import ServerConfig
from ..core.header import StartMode
from ..core.status import Reason, Role, StatusBoard, WorkerState
from ..core.supervision import UNKNOWN_EXIT, Stall, StopEvent, StopPhase, next_phase
from ..core.watchdog import Act, Action, Verdict, Watchdog
from ..ipc.segment import ServerSegment
from ..ipc.shm import SHMFactory
from .adoption import AdoptedProcess, find_orphans, reach_connect
from .common import drain, monotonic_ms, signal_name, signals_wake
from .keeper import FdKeeper
from .notify import SystemdNotifier
from .reload import Reloader
from .startup import doorbell_folder, listen, open_segment, refuse_if_running
from .workers import Worker, exit_reason, frozen, save_copy, stack_dump

log = logging.getLogger("server.supervisor")

CHECK_INTERVAL = 0.25
STOP_MARGIN = 5.0  # beyond --stop-timeout: a stopping worker may still report what is left
_STOPPING = (StopPhase.STOPPING_CONNECT, StopPhase.STOPPING_LOGIC)
_VERDICT_REASON = {Verdict.HUNG: Reason.HUNG, Verdict.SLOW: Reason.SLOW}


class Supervisor:
    def __init__(self, cfg: ServerConfig, *, discard_pending: bool = False) -> None:
        self.cfg = cfg
        self.discard_pending = discard_pending
        self.workers = {r: Worker(r) for r in (Role.LOGIC, Role.CONNECT)}
        self.watchdog = Watchdog(cfg.hang_timeout, cfg.request_timeout, signal_name=signal_name)
        self.notify = SystemdNotifier.from_environment()
        self.stop_phase = StopPhase.RUNNING
        self.stop_signals = 0
        self.stall = Stall(cfg.stop_timeout + STOP_MARGIN, 0.0)
        self.reloader = Reloader(self)
        self.keeper = FdKeeper()

    # -- start --------------------------------------------------------------------
    def open(self) -> None:
        cfg = self.cfg
        self.orphans = find_orphans(cfg)  # workers of a supervisor that was killed: adopt them
        if not self.orphans:
            refuse_if_running(cfg)
        if Role.CONNECT in self.orphans:
            control, self.listener = reach_connect(cfg.key, self.orphans[Role.CONNECT])
            self.workers[Role.CONNECT].control = control
        else:
            self.listener = listen(cfg)
        self.address = self.listener.getsockname()[:2]
        self.run_dir, self.own_run_dir = doorbell_folder()
        self.seg = open_segment(cfg, self.discard_pending)
        self.board(self.seg.status)
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

    def board(self, status: StatusBoard) -> None:
        self.status = status
        self.meter = status.meter(Role.SUPERVISOR)
        status.supervisor_started()

    def spawn(self, w: Worker, now: float, adopt: socket.socket | None = None) -> None:
        if w.role is Role.CONNECT and adopt is None:
            adopt = self.keeper.resume()  # the clients of the one that died, if any
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        w.start(
            self.cfg,
            self.listener,
            log_level=level if isinstance(level, str) else "INFO",
            run_dir=self.run_dir,
            adopt=adopt,
        )
        assert w.proc is not None
        self.status.started(w.role, w.proc.pid, w.reason, w.detail)
        self.watchdog.started(w.role, now, self.status.progress(w.role))
        if w.reason is Reason.FIRST_START:
            log.info("started the %s process, pid %d", w.name, w.proc.pid)
        elif w.reason is Reason.RELOADED:
            log.info("started the new %s process, pid %d (SIGHUP)", w.name, w.proc.pid)
        else:
            log.warning(
                "restarted the %s process, pid %d (restart %d; last one: %s)",
                w.name,
                w.proc.pid,
                self.status.restarts(w.role),
                w.reason.describe(w.detail),
            )
            self.notify.status(f"restarted the {w.name} process ({w.reason.describe(w.detail)})")

    def adopt(self, w: Worker, pid: int, now: float) -> None:
        w.proc, w.restart_at = AdoptedProcess(pid), None
        self.watchdog.started(w.role, now, self.status.progress(w.role))
        log.warning("adopted the %s process, pid %d, of the supervisor that died", w.name, pid)

    # -- the loop -----------------------------------------------------------------------
    def run(self) -> int:
        hup = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # no reload before we run
        try:
            self.open()
        finally:
            signal.signal(signal.SIGHUP, hup)
        handlers: dict[int, Any] = {s: self._on_signal for s in (signal.SIGINT, signal.SIGTERM)}
        handlers[signal.SIGHUP] = self.reloader.on_signal
        handlers[signal.SIGCHLD] = lambda *_: None  # only to wake the select
        try:
            with signals_wake(handlers) as wake:
                now = time.monotonic()
                for w in self.workers.values():
                    if w.role in self.orphans:
                        self.adopt(w, self.orphans[w.role], now)
                    else:
                        self.spawn(w, now)
                print(f"listening on {self.address[0]}:{self.address[1]}", flush=True)
                self.notify.ready(f"listening on {self.address[0]}:{self.address[1]}")
                while self.stop_phase is not StopPhase.DONE:
                    ready = [wake] + [c.fileno() for c in self.controls() if c is not None]
                    select.select(ready, [], [], CHECK_INTERVAL)  # signals write to the pipe
                    drain(wake)
                    self.check(time.monotonic())
            return 0
        finally:
            self.close()

    def controls(self) -> tuple[socket.socket | None, socket.socket | None]:
        return self.workers[Role.CONNECT].control, self.workers[Role.CONNECT].retiring_control

    def read_notices(self) -> None:
        for control in self.controls():
            self.keeper.read(control)
        self.status.set("descriptors_held", len(self.keeper.held))

    def close_control(self, w: Worker) -> None:
        if w.control is not None:
            w.control.close()
            w.control = None

    def drop_clients(self, w: Worker, why: str) -> None:
        """The connect process ended: read its last notices, then close our
        duplicates of its clients (a new one cannot resume them yet)."""
        self.keeper.read(w.control)
        if w.control is not None:
            w.control.close()
            w.control = None
        n = self.keeper.close_all()
        self.status.set("descriptors_held", 0)
        if n:
            log.info(
                "closed the %d client socket(s) still held for the connect process (%s)", n, why
            )

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stop_signals += 1

    def check(self, now: float) -> None:
        self.meter.heartbeat[0] += 1
        self.meter.beat_at[0] = monotonic_ms()
        self.notify.watchdog(now)
        if self.stop_signals and self.stop_phase is StopPhase.RUNNING:
            log.info("stop requested: stopping the connect process first")
            self.notify.stopping()
            self.advance(StopEvent.STOP_REQUESTED, now)
        elif self.stop_signals > 1 and self.stop_phase is not StopPhase.DONE:
            log.warning("second stop request: killing the workers now")
            self.advance(StopEvent.SECOND_REQUEST, now)
            return
        self.read_notices()
        self.keeper.flush_resume()
        lost = self.keeper.settle_resume(self.workers[Role.CONNECT].control)
        if lost:
            log.info("closed %d client(s) the new connect process did not take", lost)
        self.reloader.check(now, running=self.stop_phase is StopPhase.RUNNING)
        self.watch(now)
        for w in self.workers.values():
            if w.proc is None and w.restart_at is not None and now >= w.restart_at:
                self.spawn(w, now)
        connect, logic = self.workers[Role.CONNECT], self.workers[Role.LOGIC]
        if self.stop_phase is StopPhase.STOPPING_CONNECT and connect.proc is None:
            log.info("connect process stopped; stopping the logic process once its queue is empty")
            self.advance(StopEvent.CONNECT_EXITED, now)
        elif self.stop_phase is StopPhase.STOPPING_LOGIC and logic.proc is None:
            self.advance(StopEvent.LOGIC_EXITED, now)
        elif self.stop_phase in _STOPPING and self.stall.expired(self.movement(), now):
            w = connect if self.stop_phase is StopPhase.STOPPING_CONNECT else logic
            log.warning(
                "the %s process did not stop, and nothing moved for %.0f s: killing it",
                w.name,
                self.stall.timeout,
            )
            w.kill()

    def movement(self) -> tuple[int, ...]:
        """Changes while a stop still makes progress."""
        s = self.status
        return (s.progress(Role.CONNECT), s.progress(Role.LOGIC), s.requests(Role.LOGIC))

    def advance(self, event: StopEvent, now: float) -> None:
        """Move the stop to its next phase and do what entering it means."""
        self.stop_phase = next_phase(self.stop_phase, event)
        if self.stop_phase is StopPhase.STOPPING_CONNECT:
            self.begin_stop(self.workers[Role.CONNECT], now)
        elif self.stop_phase is StopPhase.STOPPING_LOGIC:
            self.begin_stop(self.workers[Role.LOGIC], now)
        elif self.stop_phase is StopPhase.DONE and event is StopEvent.SECOND_REQUEST:
            for w in self.workers.values():
                w.kill()
                w.restart_at = None

    def begin_stop(self, w: Worker, now: float) -> None:
        w.restart_at = None
        w.stop_requested = True
        self.stall = Stall(self.cfg.stop_timeout + STOP_MARGIN, now)
        if w.proc is not None:
            w.proc.send_signal(signal.SIGTERM)

    # -- the watchdog ----------------------------------------------------------------------
    def watch(self, now: float) -> None:
        seen = {}
        for w in self.workers.values():
            if w.proc is None:
                continue
            code = w.proc.poll()
            if code is not None and (w.stop_requested or self.stop_phase is StopPhase.DONE):
                self.stopped(w, code)
                continue
            if code is not None and w.reload_requested:
                self.reloader.logic_exited(w, code, now)
                continue
            seen[w.role] = w.seen(self.status, code, frozen(w.proc.pid) if code is None else False)
        for action in self.watchdog.check(now, seen):
            self.carry_out(action, now)

    def carry_out(self, action: Action, now: float) -> None:
        w = self.workers[action.role]
        pid = w.proc.pid if w.proc is not None else 0
        if action.act is Act.WARN_SLOW:
            log.warning(
                "the %s process (pid %d): %s; %s", w.name, pid, action.reason, stack_dump(w)
            )
        elif action.act is Act.DUMP:
            log.error(
                "the %s process (pid %d) is %s; %s, then it is killed",
                w.name,
                pid,
                action.reason,
                stack_dump(w),
            )
        elif action.act is Act.KILL:
            log.error("killing the %s process (pid %d): %s", w.name, pid, action.reason)
            w.kill()
        else:  # RESTART or REINIT: it exited
            assert w.proc is not None
            code = w.proc.poll()
            w.proc = None
            if w.role is Role.CONNECT:
                self.keeper.read(w.control)  # its last notices
                self.close_control(w)
            if action.verdict in _VERDICT_REASON:
                w.reason = _VERDICT_REASON[action.verdict]
                timeout = self.cfg.hang_timeout if action.verdict is Verdict.HUNG else None
                w.detail = int(timeout or self.cfg.request_timeout)
            else:
                w.reason, w.detail, _ = exit_reason(code)
            w.restart_at = now + action.delay
            state = WorkerState.BACKING_OFF if action.delay else WorkerState.RESTARTING
            self.status.stopped(w.role, state)
            when = (
                f"in {action.delay:.1f} s (no progress since its start)" if action.delay else "now"
            )
            log.warning(
                "the %s process (pid %d) ended: %s; restarting it %s",
                w.name,
                pid,
                action.reason,
                when,
            )
            if action.act is Act.REINIT:
                self.reinit(w, now)

    def reinit(self, culprit: Worker, now: float) -> None:
        """The worker found the segment corrupt twice in a row: save it,
        re-initialise it, and start every worker again on the new one."""
        for w in self.workers.values():
            w.kill()
            if w.proc is not None:
                w.proc.wait(5)
                w.proc = None
            if w.role is Role.CONNECT:
                self.drop_clients(w, "the segment is re-initialised")
            w.reason, w.detail, w.restart_at = Reason.REINIT, 0, now
            self.watchdog.forget(w.role)
        path = save_copy(self.cfg.key)
        lost = self.seg.losses()
        self.seg.detach()
        SHMFactory.remove(self.cfg.key)
        self.seg = ServerSegment.create(self.cfg)
        self.board(self.seg.status)
        self.status.started(Role.SUPERVISOR, os.getpid(), Reason.REINIT)
        log.warning(
            "the %s process found the segment corrupt twice in a row: saved a copy to %s and "
            "re-initialised it (lost: %s); client connections are closed",
            culprit.name,
            path,
            lost,
        )

    def stopped(self, w: Worker, code: int) -> None:
        assert w.proc is not None
        pid = w.proc.pid
        w.proc = None
        if w.role is Role.CONNECT:
            self.drop_clients(w, "it stopped")
        self.status.stopped(w.role)
        self.watchdog.forget(w.role)
        if code in (0, UNKNOWN_EXIT):  # an adopted one: it was asked to, and it is gone
            log.info("the %s process (pid %d) stopped", w.name, pid)
        else:
            log.warning(
                "the %s process (pid %d) ended while stopping: %s",
                w.name,
                pid,
                exit_reason(code)[2],
            )

    def close(self) -> None:
        self.keeper.close_all()
        for w in self.workers.values():
            for proc in (w.proc, w.retiring):
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait(5)
            w.proc = w.retiring = None
        if hasattr(self, "listener"):
            self.listener.close()
        if getattr(self, "own_run_dir", False):
            shutil.rmtree(self.run_dir, ignore_errors=True)
        if hasattr(self, "seg"):
            for role in Role:
                self.status.stopped(role)
            self.seg.detach()
            log.info("stopped; the segment stays for the next run (clean removes it)")
