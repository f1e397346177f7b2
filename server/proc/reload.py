"""SIGHUP: restart both workers gracefully with the code now on disk.

Like gunicorn's HUP, but nothing a client sent or is owed is dropped:

* **logic**: SIGHUP to it; it finishes the step under way (a step is
  atomic, see ``server.core.stepper``), exits 0, and the supervisor starts
  the next one at once.  The codes not yet stepped wait in the inbound
  queue; the new process starts with them.
* **connect**: a new connect process is started *next to* the old one and
  given the other end of the old one's control socket.  It sends READY;
  the old one stops reading and popping, hands over every client socket,
  each client's incomplete frame and unwritten replies, and the codes not
  yet queued (``server.proc.handover``), lets go of its doorbell and exits;
  the new one adopts all of it and carries on.  Clients see a pause of a
  few milliseconds, not a disconnect.  An old process that has not handed
  over within ``--hang-timeout`` seconds is killed: its clients are then
  lost, as after a crash, and the log says so.

Both halves run at once; each is logged when it starts and when it ends.
A SIGHUP during a stop, or while one reload is still under way, is logged
and ignored.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

from ..core.status import Reason, Role, WorkerState
from .workers import Worker, exit_reason

log = logging.getLogger("server.supervisor")


class Reloader:
    def __init__(self, supervisor: Any) -> None:
        self.sup = supervisor
        self.requested = 0  # SIGHUPs received (set from the signal handler)
        self.done = 0

    def on_signal(self, signum: int, frame: Any) -> None:
        self.requested += 1

    def under_way(self) -> bool:
        w = self.sup.workers
        return w[Role.LOGIC].reload_requested or w[Role.CONNECT].retiring is not None

    def check(self, now: float, running: bool) -> None:
        """Start a reload if one was asked for; watch a connect handing over."""
        if self.requested != self.done:
            self.done = self.requested
            if not running:
                log.info("SIGHUP ignored: the server is stopping")
            elif self.under_way():
                log.info("SIGHUP ignored: the previous one is still under way")
            else:
                self.begin(now)
        self.watch_retiring(self.sup.workers[Role.CONNECT], now)

    def begin(self, now: float) -> None:
        log.info("SIGHUP: restarting the workers gracefully with the code on disk")
        self.sup.notify.status("reloading: restarting the workers with the code on disk")
        logic = self.sup.workers[Role.LOGIC]
        if logic.proc is not None:
            logic.reload_requested = True
            logic.proc.send_signal(signal.SIGHUP)
        connect = self.sup.workers[Role.CONNECT]
        if connect.proc is None or connect.control is None:
            return  # restarting anyway (it crashed): its next start reads the new code
        connect.retiring = connect.proc
        connect.retire_by = now + self.sup.cfg.hang_timeout
        connect.proc = None
        connect.reason, connect.detail = Reason.RELOADED, connect.retiring.pid
        self.sup.watchdog.forget(Role.CONNECT)
        self.sup.spawn(connect, now, adopt=connect.control)

    def watch_retiring(self, w: Worker, now: float) -> None:
        old = w.retiring
        if old is None:
            return
        code = old.poll()
        if code is None:
            if now > w.retire_by:
                log.error(
                    "the old connect process (pid %d) did not hand over its clients within "
                    "%.0f s (--hang-timeout): killing it; its clients are lost",
                    old.pid,
                    self.sup.cfg.hang_timeout,
                )
                old.kill()
            return
        w.retiring = None
        if code == 0:
            log.info("the old connect process (pid %d) handed over and exited", old.pid)
        else:
            log.warning(
                "the old connect process (pid %d) ended while handing over: %s",
                old.pid,
                exit_reason(code)[2],
            )

    def logic_exited(self, w: Worker, code: int, now: float) -> None:
        """The logic process asked to reload has exited: start the next one now."""
        assert w.proc is not None
        pid = w.proc.pid
        w.proc = None
        w.reload_requested = False
        w.reason, w.detail, w.restart_at = Reason.RELOADED, pid, now
        self.sup.watchdog.forget(w.role)
        self.sup.status.stopped(w.role, WorkerState.RESTARTING)
        if code == 0:
            log.info("the logic process (pid %d) finished its step and exited", pid)
        else:
            log.warning(
                "the logic process (pid %d) ended while reloading: %s", pid, exit_reason(code)[2]
            )
