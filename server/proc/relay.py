"""The bus relay of one host: ``python -m server relay --config bus.toml [--host NAME]``.

It forwards this host's outboxes to the relays of the other hosts, and
pushes what they send into the inboxes of this host's endpoints
(``server.ipc.bus``).  The protocol is ``server.core.buslink``; this module
only moves bytes between sockets and queues, in one ``selectors`` loop.

* For each other host, an *outgoing* link: it connects (backing off from
  0.1 to 2 s between tries, logging each change of state once), sends
  HELLO, learns from the peer's HELLO what it applied, frees those messages
  from the outbox, and sends the rest, in order.  A message leaves the
  outbox only when an ACK covers it (``SharedQueue.peek``/``commit``), so a
  relay killed at any moment resends from where the peer really is.
* Each *incoming* link (a peer's outgoing one) answers HELLO with the last
  sequence applied from that peer, then applies its batches in order: one push
  into the target's inbox *with a mark* (``push_many(mark=...)``: the push
  and "applied up to seq S from host H" are one step), so a retransmission
  is never applied twice.  What was applied is the largest mark of that
  peer's slot over this host's inboxes.  ACKs go every ``ack_every``
  messages or ``ack_ms`` after the first unacknowledged one.
* Back-pressure: a full inbox stops reading that link (TCP flow control
  makes the sender wait, then its outbox fills, then ``send`` waits); the
  relay sleeps on the inbox until there is room.  Nothing is dropped and
  nothing reconnects.

SIGTERM or SIGINT stops it: it acknowledges what it applied and closes.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import selectors
import signal
import socket
import time
from collections.abc import Callable

from ..core.busconfig import BusConfig
from ..core.buslink import LinkError
from ..core.linkboard import REGION_SIZE as LINKS_SIZE
from ..core.linkboard import LinkBoard, LinkSlot
from ..core.sharedring import MARK_SLOTS
from ..errors import ConfigError
from ..ipc.sharedqueue import SharedQueue
from .common import Heartbeat, Parent
from .relaylinks import InLink, OutLink

log = logging.getLogger("server.relay")

TICK = 0.5

Callback = Callable[[int], None]


class Relay:
    """One host's relay.  ``listener``: the socket its supervisor bound
    (None: bind here); ``links``: the board where it shows its links (None:
    a private one); ``heartbeat``: its supervisor's heartbeat, bumped each
    turn of the loop (then the relay also stops when the supervisor is
    gone)."""

    def __init__(
        self,
        config: BusConfig,
        host: str,
        *,
        listener: socket.socket | None = None,
        links: LinkBoard | None = None,
        heartbeat: Heartbeat | None = None,
    ) -> None:
        if len(config.hosts) > MARK_SLOTS:
            raise ConfigError(
                f"{config.path}: {len(config.hosts)} hosts; a bus has at most {MARK_SLOTS}",
                option="hosts",
                value=len(config.hosts),
            )
        self.config = config
        self.me = config.host(host)
        self.slots = {name: i for i, name in enumerate(sorted(config.hosts))}
        self.inboxes = {
            a: SharedQueue.open(config.inbox_key(a), config.inbox_bytes)
            for a in config.endpoints_on(host)
        }
        self.by_target = {a.encode(): (a, q) for a, q in self.inboxes.items()}
        self.sel = selectors.DefaultSelector()
        self._watchers: dict[int, list[Callback]] = {}
        self.stopping = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.listener = listener if listener is not None else bind_relay(config, host)
        self.listener.setblocking(False)
        self.heartbeat = heartbeat
        self.parent = Parent() if heartbeat is not None else None
        others = [peer for peer in sorted(config.hosts) if peer != host]
        if links is None:
            links = LinkBoard(memoryview(bytearray(LINKS_SIZE)), init=True)
        self.board: dict[str, LinkSlot] = dict(zip(others, links.open(others), strict=True))
        self.outgoing = [OutLink(self, peer) for peer in others]
        self.incoming: list[InLink] = []
        self._marks: dict[tuple[str, int], int] = {}

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> None:
        old = signal.set_wakeup_fd(self._wake_w.fileno())
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.watch(self._wake_r.fileno(), lambda _m: self._drain_wake())
        self.watch(self.listener.fileno(), lambda _m: self._accept())
        log.info(
            "relay of host %s listening on %s; endpoints here: %s",
            self.me.name,
            self.me.listen,
            ", ".join(self.inboxes) or "none",
        )
        try:
            while not self.stopping:
                now = time.monotonic()
                if self.heartbeat is not None:
                    self.heartbeat.turns += 1
                    if self.parent is not None and self.parent.gone():
                        log.warning(
                            "relay of host %s: the supervisor is gone; stopping", self.me.name
                        )
                        break
                for out in self.outgoing:
                    out.tick(now)
                for link in list(self.incoming):
                    link.tick(now)
                for key, mask in self.sel.select(self._timeout(now)):
                    for callback in list(self._watchers.get(key.fd, ())):
                        callback(mask)
        finally:
            signal.set_wakeup_fd(old)
            self.close()

    def _timeout(self, now: float) -> float:
        due = [TICK] + [out.due(now) for out in self.outgoing]
        due += [link.due(now) for link in self.incoming]
        return max(0.0, min(d for d in due if d is not None))

    def _on_signal(self, signum: int, _frame: object) -> None:
        log.info("relay of host %s stopping (%s)", self.me.name, signal.Signals(signum).name)
        self.stopping = True

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(512):
                pass
        except BlockingIOError:
            pass

    # -- watching descriptors (several links may wait on one inbox) --------------------
    def watch(self, fd: int, callback: Callback, events: int = selectors.EVENT_READ) -> None:
        callbacks = self._watchers.setdefault(fd, [])
        if callback not in callbacks:
            callbacks.append(callback)
        try:
            old = self.sel.get_key(fd).events
        except KeyError:
            self.sel.register(fd, events)
        else:
            if old | events != old:
                self.sel.modify(fd, old | events)

    def unwatch(self, fd: int, callback: Callback, events: int | None = None) -> None:
        callbacks = self._watchers.get(fd, [])
        if events is not None and len(callbacks) > 1:
            return  # shared: leave the registration
        if callback in callbacks:
            callbacks.remove(callback)
        if not callbacks:
            self._watchers.pop(fd, None)
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(fd)

    def set_events(self, fd: int, events: int) -> None:
        """A socket's own events (a socket has one watcher: its link)."""
        try:
            if events:
                self.sel.modify(fd, events)
        except (KeyError, ValueError):
            pass

    # -- connections -----------------------------------------------------------------------
    def _accept(self) -> None:
        while True:
            try:
                conn, addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.incoming.append(InLink(self, conn, f"{addr[0]}:{addr[1]}"))

    def applied_from(self, peer: str, link: InLink) -> int:
        """A HELLO from ``peer`` on ``link``: the last message from it applied
        here (its largest mark).  An older link from the same peer is
        closed first: its peer is gone (it reconnected), and what it still
        held unapplied will come again on the new one."""
        if peer not in self.slots or peer == self.me.name:
            raise LinkError(f"HELLO from {peer!r}, which is not another host of {self.config.path}")
        for old in [x for x in self.incoming if x is not link and x.reader.peer == peer]:
            old.close("replaced by a new connection from the same host")
        slot = self.slots[peer]
        return max((self.last_mark(a, slot) for a in self.inboxes), default=0)

    def last_mark(self, address: str, slot: int) -> int:
        """The last seq from mark slot ``slot`` pushed into ``address``'s inbox
        (read once from shared memory, then kept: only this relay pushes
        with marks into this host's inboxes)."""
        key = (address, slot)
        if key not in self._marks:
            self._marks[key] = self.inboxes[address].mark(slot)
        return self._marks[key]

    def pushed_marked(self, address: str, slot: int, seq: int, count: int) -> None:
        self._marks[(address, slot)] = seq
        if self.heartbeat is not None:
            self.heartbeat.meter.progress[0] += count

    def close(self) -> None:
        for link in self.incoming[:]:
            link.close("the relay stops")
        for out in self.outgoing:
            out.drop("the relay stops", reconnect=False)
            out.outbox.close()
        for inbox in self.inboxes.values():
            inbox.close()
        self.listener.close()
        self._wake_r.close()
        self._wake_w.close()
        self.sel.close()


def bind_relay(config: BusConfig, host: str, patience: float = 0.0) -> socket.socket:
    """The relay's listening socket; a clear error if the address is taken
    (after ``patience`` seconds: the relay of a killed supervisor lets go
    of it a moment later) or is not on this machine."""
    me = config.host(host)
    deadline = time.monotonic() + patience
    while True:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((me.ip, me.port))
        except OSError as err:
            sock.close()
            if err.errno == errno.EADDRINUSE and time.monotonic() < deadline:
                time.sleep(0.1)
                continue
            raise ConfigError(
                f"{config.path}: host {me.name}'s relay cannot listen on {me.listen}: "
                f"{err.strerror} (is another relay running, or is the address not on this "
                f"machine?)",
                option="listen",
                value=me.listen,
            ) from None
        sock.listen(64)
        return sock


def this_host(config: BusConfig) -> str:
    """The host of ``config`` whose listen address is on this machine; an
    error unless exactly one is."""
    here = []
    for host in config.hosts.values():
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            probe.bind((host.ip, 0))
        except OSError:
            continue
        finally:
            probe.close()
        here.append(host.name)
    if len(here) != 1:
        found = ", ".join(here) if here else "none"
        raise ConfigError(
            f"{config.path}: the hosts whose address is on this machine: {found}; "
            f"say which this one is with --host",
            option="host",
            value=found,
        )
    return here[0]
