"""The shell of a connect handover: sockets passed between two connect
processes over a Unix ``SOCK_SEQPACKET`` socket (SCM_RIGHTS).

The message format and every check are in ``server.core.handover``; here
are only the sends and receives.  The supervisor gives the old process one
end of a new socket pair (HAND on its control socket, see
``server.proc.keeper``) and the successor the other; the old process
(``hand_over``) is asked by its successor's READY on it; the new one
(``take_over``) sends READY on the socket the supervisor gave it, reads the
handover until END (or until the old process is gone) and adopts what came
whole.  See ``server.proc.supervisor`` for when the supervisor does this
(SIGHUP).
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import time
from typing import Any

from ..core.client import Client
from ..core.handover import CHUNK, READY, HandoverReader, Limits, messages
from ..core.streams import INBOUND, resumable
from ..errors import HandoverError
from ..ipc.tcpstate import counters
from .adoption import lost_supervisor
from .common import TICK, Parent
from .keeper import HAND, recv_fds
from .sockets import peek_from_offset

log = logging.getLogger("server.connect")

_MESSAGE_ROOM = CHUNK + 4096  # the largest message, with room for its JSON header


def handover_socket(control: socket.socket) -> socket.socket | None:
    """The control socket is readable: the socket to hand over on (HAND),
    None for anything else.  Raises EOFError when the supervisor is gone."""
    try:
        message, fds = recv_fds(control, 64, 1)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError as err:
        raise EOFError(str(err)) from None
    if not message and not fds:
        raise EOFError("the supervisor closed the control socket")
    if message == HAND and len(fds) == 1:
        return socket.socket(fileno=fds[0])
    for fd in fds:
        os.close(fd)
    log.warning("ignoring %r on the control socket", message[:16])
    return None


def asked_to_hand_over(sock: socket.socket) -> bool | None:
    """The handover socket is readable: True for the successor's READY,
    None when it is gone (it died before asking), False for anything else."""
    try:
        message = sock.recv(64)
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return None
    if not message:
        return None
    if message != READY:
        log.warning("ignoring %r on the handover socket", message[:16])
    return message == READY


def on_control(proc: Any, from_supervisor: bool) -> None:
    """A connect process's control socket (HAND from the supervisor) or
    handover socket (READY from the successor) is readable."""
    if from_supervisor:
        try:
            sock = handover_socket(proc.control)
        except EOFError:  # the supervisor is gone: nobody will ask
            proc.sel.unregister(proc.control)
            proc.control.close()
            proc.control = proc.notices.control = None
            proc.adopted = False
            lost_supervisor(proc)
            return
        if sock is not None and proc.handover is None and not proc.stopping:
            proc.handover = sock
            proc.sel.register(sock, selectors.EVENT_READ, "handover")
        return
    asked = asked_to_hand_over(proc.handover)
    if asked is None:  # the successor died before asking
        proc.sel.unregister(proc.handover)
        proc.handover.close()
        proc.handover = None
    proc.handing_over = bool(asked) and not proc.stopping


def hand_over(proc: Any, control: socket.socket) -> None:
    """The old process: send every client and every code not yet queued."""
    proc.push()  # what fits goes to the queue now; the rest travels
    proc.release_slow(every=True)  # the output in memory travels: nothing holds the head
    moved = proc.anchors.advance()
    if moved is not None:
        proc.outbound.commit_head(*moved)
    proc.outbound.doorbell.close()  # the successor becomes the consumer
    clients, codes = proc.table.export()
    socks = [c.handle for c in proc.table.clients.values()]
    started = time.monotonic()
    control.setblocking(True)
    control.settimeout(proc.cfg.stop_timeout)
    for message, index in messages(clients, codes):
        if index is None:
            control.sendall(message)
        else:
            socket.send_fds(control, [message], [socks[index].fileno()])
    log.info(
        "handed %d connection(s) and %d queued code(s) to the new connect process in %.0f ms",
        len(clients),
        len(codes),
        (time.monotonic() - started) * 1000,
    )


def resume(proc: Any, c: Client, positions: tuple[int, int, int], crashed: bool) -> str:
    """Go on with ``c``'s streams where the ledger and its kernel say they
    stand (``server.core.streams``); why it cannot, or ""."""
    sock = c.handle
    proc.peek_off = proc.peek_off and peek_from_offset(sock)  # the peeking starts afresh
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
        k = counters(sock)
    except OSError as err:
        return f"its socket failed: {err.strerror or err}"
    streams = proc.streams
    streams.settle(c.slot, INBOUND, positions[0])
    if crashed:
        r = resumable(streams, c.slot, c.conn, positions, (k.received, k.unread, k.acked, k.unsent))
        if r.problem:
            return r.problem
        in_skip = r.in_skip
        c.delivered, c.skip_out, c.anchor = r.written, r.out_skip, r.out_from
        if r.out_from > positions[1]:
            proc.unborn[c.conn] = r.out_from  # the codes before it were written already
    else:  # handed over: the output not yet taken came with it
        in_skip = max(0, streams.value(c.slot, INBOUND, positions[0]) - k.consumed)
        c.delivered = k.taken + len(c.out)
        c.anchor = streams.anchor_of(c.slot)[1]
        c.unkept = bool(c.out)
    # A handed-over partial frame is the bytes just before ``k.consumed``.
    c.received = c.consumed = k.consumed
    c.sent = c.sent_seen = k.taken
    c.queued = k.unsent
    if in_skip:
        proc.take_out(c, k.consumed + in_skip)  # queued already: drop them
        c.received = c.consumed
    return ""


def take_over(proc: Any, adopt: socket.socket) -> list[Client]:
    """The new process: ask for the handover, read it, adopt what came whole."""
    cfg = proc.cfg
    limits = Limits(
        max_conns=cfg.max_conns,
        max_partial=cfg.max_frame + 4,
        max_out=4 * cfg.out_buffer + cfg.queue_bytes + cfg.max_frame,
        max_code=cfg.queue_bytes,
    )
    reader = HandoverReader(limits)
    adopt.sendall(READY)
    adopt.settimeout(TICK)
    parent = Parent()
    try:
        while not reader.complete:
            try:
                message, fds, _flags, _addr = socket.recv_fds(adopt, _MESSAGE_ROOM, 1)
            except TimeoutError:
                if parent.gone():
                    break
                continue
            if not message and not fds:
                break  # the old process is gone
            reader.feed(message, fds)
    except (HandoverError, OSError) as err:
        log.error("the handover from the previous connect process failed: %s", err)
    finally:
        for fd in reader.leftover():
            with contextlib.suppress(OSError):
                os.close(fd)
        adopt.close()
    if not reader.complete:
        log.warning(
            "the handover from the previous connect process was cut short; %d connection(s) "
            "came whole, the others are lost",
            len(reader.clients),
        )
    if reader.resume:  # a dead process's sockets: only those still open in the table
        keep = [(s, fd) for s, fd in reader.clients if proc.table.conns.is_open(s.conn)]
        for _s, fd in set(reader.clients) - set(keep):
            os.close(fd)
        reader.clients = keep
    try:
        adopted = proc.table.adopt([s for s, _ in reader.clients], reader.codes)
    except HandoverError as err:
        log.error("cannot adopt the connections handed over: %s; they are lost", err)
        for _state, fd in reader.clients:
            os.close(fd)
        proc.notices.took(0)
        return []
    in_ring, out_ring = proc.inbound.ring, proc.outbound.ring
    positions = (in_ring.tail, out_ring.head, out_ring.tail)
    lost = 0
    for c, (_state, fd) in zip(adopted, reader.clients, strict=True):
        c.handle = socket.socket(fileno=fd)
        c.handle.setblocking(False)
        proc.notices.opened(c.conn, c.handle)  # the supervisor's duplicates are ours now
        why = resume(proc, c, positions, reader.resume)
        if why:
            proc.table.close(c, f"lost with the connect process that died: {why}")
            lost += 1
    proc.notices.took(len(adopted))
    source = "the connect process that died" if reader.resume else "the previous connect process"
    log.info(
        "took over %d connection(s) from %s%s",
        len(adopted) - lost,
        source,
        f"; {lost} closed (their bytes in flight died with it)" if lost else "",
    )
    return adopted
