"""The logic process: a thin loop over ``server.core.stepper.LogicStepper``.

Attach to the segment, finish a step a crashed predecessor published but did
not consume, then loop ``step()``: codes are consumed only after their
replies are published (see ``server.core.stepper``).  With nothing to do it
sleeps on the inbound queue's doorbell, at most ``TICK`` at a time so the
heartbeat keeps moving; while its replies wait for room in the outbound
queue it backs off briefly.  SIGTERM (sent by the supervisor) stops it once
nothing is pending; when the supervisor is gone it serves on until a new
one adopts it (``server.proc.adoption``) or it is told to stop.  SIGHUP (a
graceful restart, ``run``'s SIGHUP) stops it after the step under way: the
codes not yet stepped stay in the queue for the next logic process.

Test-only fault injection: ``STCP_CRASH_AFTER_PUBLISHING_STEP=N`` makes the
process kill itself with SIGKILL right after publishing step N, before
consuming its codes (the crash tests check that recovery neither loses nor
repeats a reply).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core.app import load_app
from ..core.config import ServerConfig
from ..core.framing import Framing, make_framing
from ..core.idle import Spinner
from ..core.status import Role
from ..core.stepper import LogicStepper
from ..ipc.segment import ServerSegment
from .common import TICK, Heartbeat, Parent, enable_stack_dumps, spin_scale

if TYPE_CHECKING:
    from .room import Room

log = logging.getLogger("server.logic")

CRASH_ENV = "STCP_CRASH_AFTER_PUBLISHING_STEP"
REQUEST_SPIN = 200e-6  # after publishing replies: watch for the next request this long
LIGHT = 1  # steps of at most this many codes: a light load


def crash_after_step(n: int) -> Callable[[int], None] | None:
    """The fault injection hook: SIGKILL ourselves after publishing step ``n``."""
    if n <= 0:
        return None

    def hook(step: int) -> None:
        if step == n:
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


class _Stop:
    requested = False  # SIGTERM: once nothing is pending
    reload = False  # SIGHUP: after this step

    def __call__(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGHUP:
            self.reload = True
        else:
            self.requested = True


def main(cfg: ServerConfig) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when we stop
    stop = _Stop()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    enable_stack_dumps()
    app = load_app(cfg.app)()
    seg = ServerSegment.attach(cfg)
    heartbeat = Heartbeat(seg.status.meter(Role.LOGIC)).start()
    framing = make_framing(cfg.framing, cfg.max_frame)
    room = None
    try:
        if cfg.bus:
            from .room import Room

            room = Room(cfg, seg, app, framing)
        return _run(seg, app, stop, framing, heartbeat, room)
    finally:
        heartbeat.stop()
        if room is not None:
            room.close()
        seg.detach()


def _run(
    seg: ServerSegment,
    app: Any,
    stop: _Stop,
    framing: Framing,
    heartbeat: Heartbeat,
    room: Room | None = None,
) -> int:
    inbound, outbound, status = seg.inbound, seg.outbound, seg.status
    hook = crash_after_step(int(os.environ.get(CRASH_ENV) or 0))
    stepper = LogicStepper(
        inbound.ring,
        outbound.ring,
        seg.journal,
        app,
        framing,
        hook,
        meter=heartbeat.meter,
        clock=time.monotonic,
        setaside=seg.setaside,
        wall_clock=time.time,
        room=room,
    )
    finished = stepper.recover()
    bridge = room.bridge if room is not None else None
    if bridge is not None and bridge.recover():
        log.info("finished the room step a crashed process had published")
    inbound.recover_consumer()
    outbound.recover_producer()
    log.info(
        "started: %d codes pending inbound, %d processed so far%s",
        len(inbound),
        inbound.stats()["popped"],
        f"; finished the step a crashed process had published ({finished} codes)"
        if finished
        else "",
    )
    parent = Parent()
    spinner = Spinner(REQUEST_SPIN * spin_scale())  # before sleeping on the inbound doorbell
    last = 0  # codes the last step took: a few means a light load, where a spin pays
    orphaned = False
    errors_reported = 0
    backoff = 0.0
    while True:
        heartbeat.turns += 1
        done = stepper.step()
        got = 0
        if bridge is not None and not stop.requested:  # stopping: they wait in the inbox
            got = bridge.step()
        errors = stepper.dispatcher.errors + (bridge.errors if bridge is not None else 0)
        if errors != errors_reported:
            status.add("app_errors", errors - errors_reported)
            errors_reported = errors
        if stop.reload and done not in (LogicStepper.PARTIAL, LogicStepper.BLOCKED):
            log.info("SIGHUP: the step under way is done; handing over to a new logic process")
            break
        if done > 0 or done == LogicStepper.PARTIAL or got > 0:
            backoff = 0.0
            last = done
            continue
        if LogicStepper.BLOCKED in (done, got):  # BridgeStep.BLOCKED is the same -1
            if stop.requested:  # nobody is left to drain the outbound queue
                log.warning("stopping with replies waiting for room; the next start redoes them")
                break
            backoff = min(0.02, backoff * 2 or 0.0005)
            time.sleep(backoff)  # replies wait for the connect process (or the room) to drain
            continue
        if stop.requested:
            break
        if not orphaned and parent.gone():
            orphaned = True
            log.warning(
                "the supervisor is gone; serving on (`python -m server run` with the same key "
                "adopts this process; SIGTERM stops it)"
            )
        if room is not None:
            room.wait(inbound, TICK)
        else:
            budget = spinner.budget() if last <= LIGHT else 0.0  # heavy load: no spin
            start = time.perf_counter()
            if inbound.wait(timeout=TICK, spin=budget) and budget:
                spinner.spun(time.perf_counter() - start <= budget)  # the spin found it
            elif budget:
                spinner.spun(False)
    log.info("stopped: %d codes processed in all", inbound.stats()["popped"])
    return 0
