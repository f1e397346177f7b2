"""The protocol between two bus relays (pure: bytes in, events out, like h11).

A *link* joins the relays of two hosts over one TCP connection and carries
messages both ways; each direction numbers its messages 1, 2, 3, ... for
ever (the sequence is the sending host's outbox count, so it survives a
relay's restart).  Frames (integers big-endian)::

    u32 length of the rest | u8 type | body
    HELLO  1  u8 version (2) | u8 n | host name (n bytes) | u64 applied
    BATCH  2  u64 seq of the first | u32 count | count x (u32 LE length | message)
    ACK    3  u64 applied

A message is as it lies in an outbox or an inbox (``envelope``): u8 n |
source address | u8 m | target address | payload.  A batch carries the
messages ``seq .. seq + count - 1`` as records of the queues' ring
(``server.core.ring``: a little-endian u32 length, then the message), so
the sending relay copies a run of them from its outbox in one piece
(``peek_records``), and the receiving one pushes them into the target's
inbox as they are (it checks each with ``target_of``): the relays handle
a message without taking it apart.
The rules (TBus's handshake, our words):

* On every connect each side first sends HELLO with its own name and the
  last sequence number it *applied* from the other (pushed into the target's
  inbox, recorded with the push).  Nothing else comes before HELLO.
* The sender then sends, in order, every message after the other's
  ``applied``: on a reconnect that is a retransmission, from where the
  receiver really is, not from where the sender thinks it was.
* The receiver applies messages in order from ``applied + 1``; messages
  at or below ``applied`` are retransmissions of ones already applied,
  skipped (``Duplicate``: up to which); a gap is a protocol error (the link
  is closed and made again: the handshake puts both back in step).
* ACK says "applied up to here" (cumulative).  The receiver sends one every
  ``ack_every`` messages or ``ack_ms`` after the first unacknowledged one
  (``AckTimer``); the sender then frees those messages from shared memory.

``LinkError`` names what was wrong with the bytes; the relay logs it and
closes the connection.  A frame longer than ``max_frame`` is one.
"""

from __future__ import annotations

import collections
import struct
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import BadCode, ServerError

VERSION = 2
HELLO, BATCH, ACK = 1, 2, 3
_LEN = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_BATCH_HEAD = struct.Struct(">QI")
_RECORD_LEN = struct.Struct("<I")  # as in the ring
DEFAULT_MAX_FRAME = 4 << 20
_NAMES = {HELLO: "HELLO", BATCH: "BATCH", ACK: "ACK"}


class LinkError(ServerError, ValueError):
    """The peer sent bytes that break the link protocol."""


@dataclass(frozen=True)
class Hello:
    peer: str
    applied: int  # the last of our messages the peer applied


@dataclass(frozen=True)
class Batch:
    first: int  # the seq of codes[0]; the others follow, one apart
    codes: list[bytes]  # messages as they lie in an inbox (``envelope``)


@dataclass(frozen=True)
class Duplicate:
    seq: int  # retransmissions of messages applied already, up to this one: skipped


@dataclass(frozen=True)
class Acked:
    applied: int  # the peer applied our messages up to here


Event = Hello | Batch | Duplicate | Acked


def hello_frame(name: str, applied: int) -> bytes:
    raw = name.encode()
    return _frame(HELLO, bytes([VERSION, len(raw)]) + raw + _U64.pack(applied))


def batch_frame(first: int, codes: list[bytes]) -> bytes:
    """The messages ``first .. first + len(codes) - 1``, in one frame."""
    pack = _RECORD_LEN.pack
    return records_frame(first, len(codes), b"".join([pack(len(c)) + c for c in codes]))


def records_frame(first: int, count: int, records: bytes) -> bytes:
    """A batch of ``count`` messages given as ring records (``peek_records``)."""
    head = _LEN.pack(1 + _BATCH_HEAD.size + len(records)) + bytes([BATCH])
    return head + _BATCH_HEAD.pack(first, count) + records


def ack_frame(applied: int) -> bytes:
    return _frame(ACK, _U64.pack(applied))


def _frame(kind: int, body: bytes) -> bytes:
    return _LEN.pack(len(body) + 1) + bytes([kind]) + body


class LinkReader:
    """The receiving half of one connection: feed it what the socket gave,
    in any pieces; it returns the events, in order.

    ``applied`` is the last sequence number applied from this peer (from
    the journal); ``note_applied`` moves it as the relay applies messages.
    ``expected_peer``: a HELLO from another host is an error."""

    def __init__(
        self,
        applied: int | Callable[[str], int],
        expected_peer: str | None = None,
        max_frame: int = DEFAULT_MAX_FRAME,
    ) -> None:
        """``applied``: a number, or (for a listener that learns who calls
        from the HELLO) a function of the peer's name that returns it."""
        self._applied_of = applied if callable(applied) else None
        self.applied = 0 if callable(applied) else applied
        self.expected_peer = expected_peer
        self.max_frame = max_frame
        self.peer: str | None = None
        self._buf = bytearray()
        self._accepted = self.applied  # the last seq handed out in a Batch

    def feed(self, data: bytes) -> list[Event]:
        self._buf += data
        events: list[Event] = []
        while len(self._buf) >= 4:
            (n,) = _LEN.unpack_from(self._buf)
            if not 1 <= n <= self.max_frame:
                raise LinkError(f"a frame of {n} bytes (the limit is {self.max_frame})")
            if len(self._buf) < 4 + n:
                break
            with memoryview(self._buf) as view:
                frame = bytes(view[4 : 4 + n])  # one copy
            del self._buf[: 4 + n]
            events.append(self._event(frame))
        return events

    def note_applied(self, seq: int) -> None:
        """The relay applied every message up to ``seq`` (pushed, marked)."""
        if not self.applied < seq <= self._accepted:
            raise ValueError(
                f"applied up to {seq} after {self.applied} with {self._accepted} received: "
                f"messages apply in order, once"
            )
        self.applied = seq

    def _event(self, frame: bytes) -> Event:
        kind = frame[0]
        body = frame[1:]
        if self.peer is None and kind != HELLO:
            raise LinkError(f"{_NAMES.get(kind, kind)} before HELLO")
        if kind == HELLO:
            return self._hello(body)
        if kind == BATCH:
            return self._batch(body)
        if kind == ACK:
            if len(body) != 8:
                raise LinkError(f"an ACK of {len(body)} bytes (8 expected)")
            return Acked(_U64.unpack(body)[0])
        raise LinkError(f"unknown frame type {kind}")

    def _hello(self, body: bytes) -> Hello:
        if self.peer is not None:
            raise LinkError(f"a second HELLO (from {self.peer!r})")
        if len(body) < 2 or body[0] != VERSION:
            raise LinkError(f"HELLO of version {body[0] if body else '?'}; we speak {VERSION}")
        n = body[1]
        if len(body) != 2 + n + 8:
            raise LinkError(f"a HELLO of {len(body)} bytes for a name of {n}")
        peer = _text(body[2 : 2 + n], "host name")
        if self.expected_peer is not None and peer != self.expected_peer:
            raise LinkError(f"HELLO from host {peer!r}; this link is to {self.expected_peer!r}")
        self.peer = peer
        if self._applied_of is not None:  # before any BATCH after this HELLO is judged
            self.applied = self._accepted = self._applied_of(peer)
        return Hello(peer, _U64.unpack_from(body, 2 + n)[0])

    def _batch(self, body: bytes) -> Batch | Duplicate:
        if len(body) < _BATCH_HEAD.size:
            raise LinkError(f"a BATCH frame of {len(body)} bytes")
        first, count = _BATCH_HEAD.unpack_from(body)
        codes: list[bytes] = []
        at, end = _BATCH_HEAD.size, len(body)
        unpack = _RECORD_LEN.unpack_from
        for _ in range(count):
            if end - at < 4:
                raise LinkError(f"a BATCH of {count} cut short after {len(codes)}")
            (n,) = unpack(body, at)
            at += 4
            if n > end - at:
                raise LinkError(f"message {first + len(codes)} of a BATCH runs past its end")
            codes.append(body[at : at + n])
            at += n
        if at != end:
            raise LinkError(f"{end - at} stray bytes after a BATCH of {count}")
        if not codes:
            raise LinkError("an empty BATCH")
        last = first + count - 1
        if last <= self._accepted:
            return Duplicate(last)
        if first > self._accepted + 1:
            raise LinkError(f"BATCH {first}..{last} after {self._accepted}: a gap")
        skip = self._accepted + 1 - first  # the front was applied before: a retransmission
        self._accepted = last
        return Batch(first + skip, codes[skip:]) if skip else Batch(first, codes)


def _text(raw: bytes, what: str) -> str:
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise LinkError(f"a {what} that is not UTF-8: {raw[:32]!r}") from None
    if not text:
        raise LinkError(f"an empty {what}")
    return text


class SentWindow:
    """The sender's side of one link: which outbox messages are on their
    way, where each batch of them ends in the outbox (the stream position a
    ``commit`` needs), and what an ACK frees.

    ``base`` is the outbox's taken count: its oldest message has seq
    ``base + 1``.  ``sent`` is the last seq sent on this connection.  An
    ACK in the middle of a batch frees the batches before it; the rest of
    that batch goes with a later ACK (or the next HELLO)."""

    def __init__(self, base: int, head: int) -> None:
        self.base = base
        self.sent = base
        self.next_pos = head  # where the next message to send starts in the outbox
        self._ends: collections.deque[tuple[int, int]] = collections.deque()  # (last seq, end)

    def sending(self, count: int, end: int) -> int:
        """``count`` messages, peeked from ``next_pos`` up to ``end``, are
        being sent: the seq of the first."""
        first = self.sent + 1
        self.sent += count
        self._ends.append((self.sent, end))
        self.next_pos = end
        return first

    def acked(self, applied: int) -> int | None:
        """The peer applied up to ``applied``: the outbox position to commit
        (None: nothing new).  An ACK beyond what was sent is a LinkError."""
        if applied > self.sent:
            raise LinkError(f"ACK of {applied}, but only {self.sent} were sent")
        end = None
        ends = self._ends
        while ends and ends[0][0] <= applied:
            end = ends.popleft()[1]
        if applied > self.base:
            self.base = applied
        return end

    @property
    def in_flight(self) -> int:
        return self.sent - self.base


# -- a message in shared memory (an inbox or an outbox) -----------------------------------
# u8 n | source address | u8 m | target address | payload.


def envelope(source: str, target: str, payload: bytes) -> bytes:
    src, dst = source.encode(), target.encode()
    if not 0 < len(src) < 256 or not 0 < len(dst) < 256:
        raise ValueError(f"bus addresses are 1..255 bytes: {source!r}, {target!r}")
    return bytes([len(src)]) + src + bytes([len(dst)]) + dst + payload


def _lengths(code: bytes, what: str = "") -> tuple[int, int]:
    """The two address lengths of a message, checked against its size."""
    n = code[0] if code else 0
    m = code[n + 1] if len(code) > n + 1 else 0
    if not n or not m or len(code) < n + m + 2:
        raise BadCode(
            f"a bus message of {len(code)} bytes whose addresses do not fit in it "
            f"({code[:16].hex()}...){what}",
            field="bus message",
            found=code[:16].hex(),
            expected="u8 n, source, u8 m, target, payload",
        )
    return n, m


def target_of(code: bytes) -> bytes:
    """The target address of a message (raw bytes), its bounds checked."""
    n, m = _lengths(code)
    return code[n + 2 : n + 2 + m]


def open_envelope(code: bytes) -> tuple[str, str, bytes]:
    """(source, target, payload) of a code read from shared memory, checked."""
    n, m = _lengths(code, ": the queue is corrupt")
    try:
        source = code[1 : 1 + n].decode()
        target = code[n + 2 : n + 2 + m].decode()
    except UnicodeDecodeError:
        raise BadCode(
            f"a bus message whose addresses are not UTF-8 ({code[:16].hex()}...)",
            field="bus message",
            found=code[:16].hex(),
            expected="UTF-8 addresses",
        ) from None
    return source, target, code[n + m + 2 :]


class AckTimer:
    """When the receiver acknowledges: every ``every`` messages applied, or
    ``ms`` after the first one not acknowledged yet.  Times are the
    caller's clock in ms (a number: tested without sleeping)."""

    def __init__(self, every: int, ms: int, acked: int = 0) -> None:
        self.every = every
        self.ms = ms
        self.acked = acked
        self._since: float | None = None

    def applied(self, seq: int, now_ms: float) -> int | None:
        """Message ``seq`` was applied; the seq to acknowledge now, if any."""
        if self._since is None:
            self._since = now_ms
        if seq - self.acked >= self.every:
            return self._ack(seq)
        return None

    def due(self, applied: int, now_ms: float) -> int | None:
        """At a tick: the seq to acknowledge now, if any."""
        if applied > self.acked and self._since is not None and now_ms - self._since >= self.ms:
            return self._ack(applied)
        return None

    def timeout_ms(self, now_ms: float) -> float | None:
        """How long the caller may sleep before ``due`` has work (None: no limit)."""
        if self._since is None:
            return None
        return max(0.0, self._since + self.ms - now_ms)

    def _ack(self, seq: int) -> int:
        self.acked = seq
        self._since = None
        return seq
