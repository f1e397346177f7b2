"""The links of a bus relay (``server.proc.relay``): one socket each.

``OutLink``: this host's messages for one peer, outbox -> BATCH, ACK ->
commit; it connects, and reconnects with back-off.  ``InLink``: a peer's
messages for this host, BATCH -> a marked push into the target's inbox ->
ACK; a full inbox pauses it.  Messages cross as they lie in the queues.  The rules are the relay module's docstring.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import selectors
import socket
import time
from typing import TYPE_CHECKING

from ..core.buslink import (
    Acked,
    AckTimer,
    Batch,
    Duplicate,
    Hello,
    LinkError,
    LinkReader,
    SentWindow,
    ack_frame,
    hello_frame,
    records_frame,
    target_of,
)
from ..core.linkboard import LinkState
from ..core.ring import RECORD_HEADER
from ..errors import BadCode
from ..ipc.sharedqueue import SharedQueue
from .relayconn import Conn

if TYPE_CHECKING:
    from ..core.linkboard import LinkSlot
    from .relay import Relay

log = logging.getLogger("server.relay")

SEND_HIGH = 256 * 1024  # bytes queued for a socket before we stop peeking more
BATCH_BYTES = 256 * 1024  # bytes per BATCH frame (or one larger message alone)
RUN = 256  # messages per marked push into one inbox
BACKOFF = (0.1, 2.0)


def max_frame(relay: Relay) -> int:
    """The largest frame a link accepts: a full batch, or one message as
    large as an inbox can hold."""
    return max(BATCH_BYTES, relay.config.inbox_bytes) + 1024


def _target(code: bytes, seq: int) -> bytes:
    try:
        return target_of(code)
    except BadCode as err:
        raise LinkError(f"message {seq}: {err}") from None


class OutLink:
    """This host's messages for one peer: outbox -> BATCH; ACK -> commit."""

    def __init__(self, relay: Relay, peer: str) -> None:
        cfg = relay.config
        self.relay = relay
        self.peer = cfg.host(peer)
        self.outbox = SharedQueue.open(cfg.outbox_key(relay.me.name, peer), cfg.inbox_bytes)
        self.conn: Conn | None = None
        self.connected = False
        self.reader: LinkReader | None = None
        self.window: SentWindow | None = None
        self.next_try = 0.0
        self.backoff = BACKOFF[0]
        self.state = "new"
        self.waiting = False  # asleep on the outbox
        self.board = relay.board[peer]

    def due(self, now: float) -> float | None:
        return None if self.conn is not None else max(0.0, self.next_try - now)

    def tick(self, now: float) -> None:
        if self.conn is None and now >= self.next_try:
            self._connect()

    def _say(self, state: str, code: LinkState, level: int = logging.INFO, why: str = "") -> None:
        if code is not self.board.out_state[0]:
            self.board.out_state[0] = code
            self.board.out_since[0] = int(time.time() * 1000)
        if state != self.state:
            log.log(level, "link %s -> %s: %s%s", self.relay.me.name, self.peer.name, state, why)
            self.state = state

    def _connect(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex((self.peer.ip, self.peer.port))
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            self._retry(f" ({errno.errorcode.get(err, err)})")
            return
        self.conn = Conn(self.relay, sock, self.board.out_bytes)
        self.connected = False
        if self.board.out_state[0] != LinkState.DOWN:
            self._say(f"connecting to {self.peer.listen}", LinkState.CONNECTING, logging.DEBUG)
        self.relay.watch(self.conn.fd, self._on_socket, selectors.EVENT_WRITE)

    def _retry(self, why: str) -> None:
        self._say("down, retrying", LinkState.DOWN, logging.WARNING, why)
        self.next_try = time.monotonic() + self.backoff
        self.backoff = min(self.backoff * 2, BACKOFF[1])

    def _on_socket(self, mask: int) -> None:
        conn = self.conn
        if conn is None:
            return
        if not self.connected:
            err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.drop(f" ({errno.errorcode.get(err, err)})")
                return
            self.connected = True
            self.reader = LinkReader(
                applied=0, expected_peer=self.peer.name, max_frame=max_frame(self.relay)
            )
            conn.send(hello_frame(self.relay.me.name, 0))
            return
        try:
            if mask & selectors.EVENT_READ:
                self._read()
            if self.conn is not None and mask & selectors.EVENT_WRITE:
                self.conn.flush()
            self.pump()
        except (LinkError, OSError) as err:
            self.drop(f" ({err})")

    def _read(self) -> None:
        assert self.conn is not None and self.reader is not None
        for event in self.reader.feed(self.conn.recv()):
            if isinstance(event, Hello):
                self._start(event.applied)
            elif isinstance(event, Acked):
                assert self.window is not None
                end = self.window.acked(event.applied)
                if end is not None:
                    self.outbox.commit(end)
                    self.board.out_acked[0] = event.applied
            else:
                raise LinkError(f"{type(event).__name__} on an outgoing link")

    def _start(self, applied: int) -> None:
        base = self.outbox.taken()
        if applied > base:  # applied there, not yet freed here: free them now
            codes, end = self.outbox.peek(applied - base)
            if len(codes) != applied - base:
                raise LinkError(f"the peer applied {applied}, but only {base + len(codes)} exist")
            self.outbox.commit(end)
            base = applied
        elif applied < base:
            log.error(
                "link %s -> %s: the peer applied only %d of the %d it acknowledged before "
                "(was its shared memory removed?); %d messages cannot be sent again",
                self.relay.me.name,
                self.peer.name,
                applied,
                base,
                base - applied,
            )
        _codes, head = self.outbox.peek(0)
        self.window = SentWindow(base, head)
        self.backoff = BACKOFF[0]
        self.board.out_acked[0] = self.board.out_sent[0] = base
        self.board.out_ups[0] += 1
        self._say(f"up (the peer applied {applied})", LinkState.UP)
        self.pump()

    def pump(self) -> None:
        """Send what the outbox holds, while the socket takes it."""
        conn, window = self.conn, self.window
        if conn is None or window is None:
            return
        while len(conn.out) < SEND_HIGH:
            records, count, end = self.outbox.peek_records(window.next_pos, BATCH_BYTES)
            if not count:
                if self.outbox.prepare_peek_wait(window.next_pos):  # until an endpoint pushes
                    if not self.waiting:
                        self.waiting = True
                        self.relay.watch(self.outbox.fileno(), self._on_outbox)
                    break
                continue
            first = window.sending(count, end)
            self.board.out_sent[0] = window.sent
            conn.send(records_frame(first, count, records))  # as they lie in the outbox

    def _on_outbox(self, _mask: int) -> None:
        self.outbox.finish_wait()
        self.waiting = False
        self.relay.unwatch(self.outbox.fileno(), self._on_outbox)
        try:
            self.pump()
        except (LinkError, OSError) as err:
            self.drop(f" ({err})")

    def drop(self, why: str, reconnect: bool = True) -> None:
        if self.waiting:
            self.outbox.finish_wait()
            self.relay.unwatch(self.outbox.fileno(), self._on_outbox)
            self.waiting = False
        if self.conn is not None:
            self.relay.unwatch(self.conn.fd, self._on_socket)
            self.conn.sock.close()
            self.conn = None
        self.window = self.reader = None
        if reconnect:
            self._retry(why)


class InLink:
    """A peer's messages for this host: BATCH -> marked push -> ACK."""

    def __init__(self, relay: Relay, sock: socket.socket, where: str) -> None:
        self.relay = relay
        self.where = where
        self.conn = Conn(relay, sock)
        self.reader = LinkReader(
            applied=lambda peer: relay.applied_from(peer, self), max_frame=max_frame(relay)
        )
        self.board: LinkSlot | None = None  # once the HELLO says who the peer is
        self.timer: AckTimer | None = None
        self.pending: list[bytes] = []  # received, not applied: messages next_seq, ...
        self.next_seq = 0
        self.blocked_on: SharedQueue | None = None
        relay.watch(self.conn.fd, self._on_socket)

    @property
    def peer(self) -> str:
        return self.reader.peer or self.where

    def due(self, now: float) -> float | None:
        if self.timer is None:
            return None
        left = self.timer.timeout_ms(now * 1000)
        return None if left is None else left / 1000

    def tick(self, now: float) -> None:
        if self.timer is not None:
            ack = self.timer.due(self.reader.applied, now * 1000)
            if ack is not None:
                self.conn.send(ack_frame(ack))

    def _on_socket(self, mask: int) -> None:
        try:
            if mask & selectors.EVENT_WRITE:
                self.conn.flush()
            if mask & selectors.EVENT_READ and self.blocked_on is None:
                self._read()
        except (LinkError, OSError) as err:
            self.close(str(err))

    def _read(self) -> None:
        for event in self.reader.feed(self.conn.recv()):
            if isinstance(event, Hello):
                applied = self.reader.applied
                self.timer = AckTimer(
                    self.relay.config.ack_every, self.relay.config.ack_ms, applied
                )
                self.conn.send(hello_frame(self.relay.me.name, applied))
                self.next_seq = applied + 1
                self.board = board = self.relay.board[event.peer]
                self.conn.counter = board.in_bytes
                board.in_applied[0] = applied
                board.in_ups[0] += 1
                board.in_state[0] = LinkState.UP
                board.in_since[0] = int(time.time() * 1000)
                log.info("link %s -> %s: up (applied %d)", event.peer, self.relay.me.name, applied)
            elif isinstance(event, Batch):
                if not self.pending:
                    self.next_seq = event.first
                self.pending += event.codes
            elif not isinstance(event, Duplicate):
                raise LinkError(f"{type(event).__name__} on an incoming link")
        self._apply()

    def _apply(self) -> None:
        """Push the pending messages, in order, a run for one inbox per
        lock round trip (one marked push_many); stop at a full inbox."""
        relay = self.relay
        slot = relay.slots[self.reader.peer or ""]
        pending = self.pending
        i = 0
        try:
            while i < len(pending):
                seq = self.next_seq
                raw = _target(pending[i], seq)
                found = relay.by_target.get(raw)
                if found is None:
                    raise LinkError(
                        f"message {seq} is for {raw!r}, which does not live on host "
                        f"{relay.me.name} (do both hosts have the same {relay.config.path}?)"
                    )
                address, inbox = found
                j, stop = i + 1, min(len(pending), i + RUN)
                while j < stop and _target(pending[j], seq + j - i) == raw:
                    j += 1
                marked = relay.last_mark(address, slot)
                if seq <= marked:  # applied already: never twice
                    skip = min(j - i, marked - seq + 1)
                    log.warning(
                        "link %s: messages %d.. were applied already; skipped %d",
                        self.peer,
                        seq,
                        skip,
                    )
                    self._applied(skip)
                    i += skip
                    continue
                done = inbox.push_many(pending[i:j], timeout=0, mark=(slot, seq))
                if done:
                    relay.pushed_marked(address, slot, seq + done - 1, done)
                    if self.board is not None:
                        self.board.in_applied[0] = seq + done - 1
                    self._applied(done)
                    i += done
                if i < j:
                    del pending[:i]
                    i = 0
                    self._block(inbox, len(pending[0]) + RECORD_HEADER)
                    return
        finally:
            del pending[:i]
        self.relay.set_events(self.conn.fd, self.conn.events())

    def _applied(self, count: int) -> None:
        """The next ``count`` pending messages are applied (or were already)."""
        assert self.timer is not None
        last = self.next_seq + count - 1
        self.reader.note_applied(last)
        self.next_seq = last + 1
        ack = self.timer.applied(last, time.monotonic() * 1000)
        if ack is not None:
            self.conn.send(ack_frame(ack))

    def _block(self, inbox: SharedQueue, room: int) -> None:
        """The inbox is full: stop reading the link until it has room (the
        socket leaves the selector: a readable socket we do not read would
        wake us for ever)."""
        if inbox.prepare_wait(room):
            self.blocked_on = inbox
            self.relay.unwatch(self.conn.fd, self._on_socket)
            self.relay.watch(inbox.fileno(), self._on_room)
            log.debug("link %s -> %s: paused, an inbox is full", self.peer, self.relay.me.name)
        else:
            self._apply()  # room came meanwhile

    def _on_room(self, _mask: int) -> None:
        inbox = self.blocked_on
        if inbox is None:
            return
        inbox.finish_wait()
        self.blocked_on = None
        self.relay.unwatch(inbox.fileno(), self._on_room)
        self.relay.watch(self.conn.fd, self._on_socket, self.conn.events())
        try:
            self._apply()
        except (LinkError, OSError) as err:
            self.close(str(err))

    def close(self, why: str) -> None:
        if self.timer is not None and self.reader.applied > self.timer.acked:
            with contextlib.suppress(OSError):
                self.conn.sock.send(ack_frame(self.reader.applied))
        if self.blocked_on is not None:
            self.blocked_on.finish_wait()
            self.relay.unwatch(self.blocked_on.fileno(), self._on_room)
            self.blocked_on = None
        self.relay.unwatch(self.conn.fd, self._on_socket)
        self.conn.sock.close()
        if self.board is not None and not any(
            x.board is self.board for x in self.relay.incoming if x is not self
        ):
            self.board.in_state[0] = LinkState.DOWN
            self.board.in_since[0] = int(time.time() * 1000)
        if self in self.relay.incoming:
            self.relay.incoming.remove(self)
        log.info("link %s -> %s: closed (%s)", self.peer, self.relay.me.name, why)
