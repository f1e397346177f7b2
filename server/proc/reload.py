"""SIGHUP: restart both workers gracefully with the code now on disk.

Like gunicorn's HUP, but nothing a client sent or is owed is dropped:

* **logic**: SIGHUP to it; it finishes the step under way (a step is
  atomic, see ``server.core.stepper``), exits 0, and the supervisor starts
  the next one at once.  The codes not yet stepped wait in the inbound
  queue; the new process starts with them.
* **connect**: a new connect process is started *next to* the old one; a
  new socket pair joins them (one end to the new process, the other sent to
  the old one in a HAND notice, ``server.proc.keeper``).  It sends READY;
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
import socket
from typing import Any

from ..core.status import Reason, Role, WorkerState
from .keeper import HAND, control_pair
from .workers import Worker, exit_reason

log = logging.getLogger("server.supervisor")


class Reloader:
    def __init__(self, supervisor: Any) -> None:
        self.sup = supervisor
        self.requested = 0  # SIGHUPs received (set from the signal handler)
        self.done = 0
        self.ended: set[int] = set()  # a retiring pid seen ended, its clients not yet settled

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
        theirs, ours = control_pair()
        try:
            socket.send_fds(connect.control, [HAND], [theirs.fileno()])
        except OSError as err:
            log.warning("cannot ask the connect process to hand over (%s): not reloading it", err)
            ours.close()
            return
        finally:
            theirs.close()
        connect.retiring, connect.retiring_control = connect.proc, connect.control
        connect.retire_by = now + self.sup.cfg.hang_timeout
        connect.proc = connect.control = None
        connect.reason, connect.detail = Reason.RELOADED, connect.retiring.pid
        self.sup.watchdog.forget(Role.CONNECT)
        self.sup.spawn(connect, now, adopt=ours)

    def watch_retiring(self, w: Worker, now: float) -> None:
        """Kill an old connect that does not hand over in time; once it has
        ended and the new one said which clients it took (TOOK), close our
        duplicates of the others, which nobody serves."""
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
        if old.pid not in self.ended:
            self.ended.add(old.pid)
            self.log_retired(old.pid, code)
        keeper = self.sup.keeper
        keeper.read(w.retiring_control)
        new_alive = w.proc is not None and w.proc.poll() is None
        took = w.control is not None and w.control.fileno() in keeper.took
        if new_alive and not took:
            return  # the new one is still taking over
        if w.control is not None:
            keeper.took.discard(w.control.fileno())
        lost = keeper.close_owned_by(w.retiring_control) if w.retiring_control else 0
        if lost:
            log.warning("closed %d client(s) the old connect process did not hand over", lost)
        if w.retiring_control is not None:
            w.retiring_control.close()
        w.retiring = w.retiring_control = None
        self.ended.discard(old.pid)

    def log_retired(self, pid: int, code: int) -> None:
        if code == 0:
            log.info("the old connect process (pid %d) handed over and exited", pid)
        else:
            log.warning(
                "the old connect process (pid %d) ended while handing over: %s",
                pid,
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
