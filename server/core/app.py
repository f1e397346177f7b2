"""What an application sees, and how codes reach it (pure core).

An application is any object that may define::

    on_open(conn)                    a client connected
    on_message(conn, payload: bytes) one frame arrived
    on_close(conn)                   the client is gone (conn.close_reason says why)

and optionally the class attributes ``framing`` ("length" or "line", the
default for ``run``) and ``full_message`` (what a client is told when the
server is full).  ``--app MODULE:ATTR`` names a class or a factory called
with no arguments.

``conn`` is a ``Conn``: ``conn.id``, ``conn.peer``, ``conn.send(data)``,
``conn.broadcast(data, include_self=False)`` and ``conn.close()``.  Nothing
is written to a socket here: each call frames the payload for the wire and
appends an outbound code to the
``Outbox`` of the step in progress, and the logic process publishes the
whole outbox at once (see ``server.core.stepper``).  The app must not keep state it
cannot lose: the logic process may be killed and restarted at any moment,
and then replays the codes whose replies were not published.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import Any

from ..errors import BadCode, CodeTooLarge, ConfigError
from .codes import HEADER_SIZE as CODE_HEADER
from .codes import NO_CONN, Kind, decode, encode, head_of, payloads
from .ring import RECORD_HEADER

log = logging.getLogger("server.app")
_SEND_OVERHEAD = CODE_HEADER + RECORD_HEADER
_MESSAGE = Kind.MESSAGE.value

BUILTIN_APPS = {"echo": "server.core.apps:Echo", "chat": "server.core.apps:Chat"}


def _as_is(payload: bytes) -> bytes:
    return payload


class Outbox:
    """The outbound codes of one step, with their size in the queue.

    Payloads are framed here (``encode_frame``), in the logic process, and
    the replies of a step to one connection, sent one after the other, go
    into one SEND code: the connect process appends them to the client's
    output buffer in one piece.  ``take()`` hands the codes over."""

    def __init__(
        self,
        limit: int,
        encode_frame: Callable[[bytes], bytes] = _as_is,
        frame_header: Callable[[int], bytes] | None = None,
    ) -> None:
        self.limit = limit  # bytes of queue the replies of a step may take
        self.encode_frame = encode_frame
        # a frame is this header then the payload (the length framing): see Conn.send
        self.frame_header = frame_header
        self.codes: list[bytes] = []
        self.size = 0  # bytes in the queue, record headers included
        self.last: Conn | None = None  # whose SEND code is being built in parts
        self.parts: list[bytes] = []
        self.remote: list[bytes] | None = None  # on a bus: the broadcasts for the room, unframed

    def clear(self) -> None:
        self.codes = []
        self.size = 0
        self.last = None
        self.parts = []

    def take_remote(self) -> list[bytes]:
        """The broadcasts for the room since the last take (none off a bus;
        ``take`` and ``clear`` leave them)."""
        remote = self.remote
        if not remote:
            return []
        self.remote = []
        return remote

    def take(self) -> tuple[list[bytes], int]:
        self._finish()
        codes, size = self.codes, self.size
        self.clear()
        return codes, size

    def _finish(self) -> None:
        if self.last is not None:
            self.codes.append(b"".join(self.parts))
            self.last = None
            self.parts = []

    def _check(self, need: int) -> None:
        if self.size + need > self.limit:
            raise CodeTooLarge(
                f"the replies to one request would take more than {self.limit} bytes of the "
                f"outbound queue; send less per request or raise --queue-bytes",
                size=self.size + need,
                limit=self.limit,
            )

    def _add(self, kind: Kind, conn: int, body: bytes) -> None:
        need = CODE_HEADER + len(body) + RECORD_HEADER
        self._check(need)
        self._finish()
        self.codes.append(encode(kind, conn, body))
        self.size += need

    def send(self, conn: int, data: bytes) -> None:
        self._add(Kind.SEND, conn, self.encode_frame(bytes(data)))

    def broadcast(self, data: bytes, exclude: int = NO_CONN) -> None:
        self._add(Kind.BROADCAST, exclude, self.encode_frame(bytes(data)))
        if self.remote is not None:
            self.remote.append(bytes(data))

    def close(self, conn: int, reason: str = "closed by the app") -> None:
        self._add(Kind.CLOSE, conn, reason.encode())


class Conn:
    """One client connection, as the app sees it."""

    __slots__ = ("id", "peer", "close_reason", "_outbox", "_send_prefix")

    def __init__(self, conn: int, peer: str, outbox: Outbox) -> None:
        self.id = conn
        self.peer = peer
        self.close_reason = ""
        self._outbox = outbox
        self._send_prefix = encode(Kind.SEND, conn)

    def send(self, data: bytes) -> None:
        # The hot path, flat: once per reply.  A length frame goes in as its
        # header and the payload itself (bytes do not change), so the payload
        # is copied once, when the code is joined, not framed first.
        out = self._outbox
        header = out.frame_header
        if header is not None and type(data) is bytes:
            head, body = header(len(data)), data
        else:
            head, body = out.encode_frame(data), b""
        if out.last is self:  # joins the SEND code being built
            need = len(head) + len(body)
            if out.size + need > out.limit:
                out._check(need)
            out.parts += (head, body)
        else:
            need = len(head) + len(body) + _SEND_OVERHEAD
            if out.size + need > out.limit:
                out._check(need)
            out._finish()
            out.last = self
            out.parts = [self._send_prefix, head, body]
        out.size += need

    def broadcast(self, data: bytes, include_self: bool = False) -> None:
        self._outbox.broadcast(data, NO_CONN if include_self else self.id)

    def close(self, reason: str = "closed by the app") -> None:
        self._outbox.close(self.id, reason)

    def __repr__(self) -> str:
        return f"<Conn {self.id:#x} {self.peer}>"


class Dispatcher:
    """Turns inbound codes into app calls; the app's replies go to ``outbox``."""

    def __init__(self, app: Any, outbox: Outbox, requests: memoryview | None = None) -> None:
        self.app = app
        self.outbox = outbox
        # A one-word counter of requests started (the status board's), so the
        # watchdog can tell a slow request from a busy stream of quick ones.
        self.requests = requests
        self.conns: dict[int, Conn] = {}
        self.errors = 0
        self._on_open = getattr(app, "on_open", None)
        self._on_message = getattr(app, "on_message", None)
        self._on_close = getattr(app, "on_close", None)

    def _conn(self, conn: int, peer: str = "?") -> Conn:
        c = self.conns.get(conn)
        if c is None:  # a connection opened before this process started
            c = self.conns[conn] = Conn(conn, peer, self.outbox)
        return c

    @staticmethod
    def requests_in(raw: bytes) -> list[int]:
        """The sizes of the requests a code carries: one per frame of a
        MESSAGE, one (empty) for any other code.  Never raises."""
        kind, _ = head_of(raw) if len(raw) >= CODE_HEADER else (0, 0)
        if kind == _MESSAGE:
            try:
                return [len(p) for p in payloads(raw, CODE_HEADER)] or [0]
            except BadCode:
                pass
        return [0]

    @staticmethod
    def request_payload(raw: bytes, k: int) -> bytes:
        """Request ``k`` of a code (a MESSAGE's frame k; another code's body)."""
        kind, _ = head_of(raw) if len(raw) >= CODE_HEADER else (0, 0)
        if kind == _MESSAGE:
            try:
                return payloads(raw, CODE_HEADER)[k]
            except (BadCode, IndexError):
                return b""
        return raw[CODE_HEADER:]

    def handle(self, raw: bytes, first: int = 0, count: int = -1) -> None:
        """Run the app on a code; for a MESSAGE, only on its requests
        ``first .. first + count`` (-1: to the end)."""
        kind, conn = head_of(raw) if len(raw) >= CODE_HEADER else (0, 0)
        if kind == _MESSAGE:  # the hot path, flat
            c = self.conns.get(conn)
            if c is None:
                c = self._conn(conn)
            try:
                frames = payloads(raw, CODE_HEADER)
            except BadCode as err:
                self.errors += 1
                log.error("skipping a bad MESSAGE code from connection %#x: %s", conn, err)
                return
            if first or count >= 0:
                frames = frames[first : None if count < 0 else first + count]
            on_message = self._on_message
            requests = self.requests
            if on_message is not None:
                for payload in frames:
                    if requests is not None:
                        requests[0] += 1
                    try:
                        on_message(c, payload)
                    except Exception:
                        self.errors += 1
                        log.exception("the app raised handling a message from connection %#x", conn)
            return
        if first:
            return  # a code without requests has only "request" 0
        try:
            code = decode(raw)
        except BadCode as err:
            self.errors += 1
            log.error("skipping a bad inbound code: %s", err)
            return
        kind, body = code.kind, code.body
        try:
            if kind is Kind.OPENED:
                c = self._conn(conn, body.decode(errors="replace"))
                if self._on_open is not None:
                    self._on_open(c)
            elif kind is Kind.CLOSED:
                c = self.conns.pop(conn) if conn in self.conns else Conn(conn, "?", self.outbox)
                c.close_reason = body.decode(errors="replace")
                if self._on_close is not None:
                    self._on_close(c)
            else:
                self.errors += 1
                log.error("skipping an outbound code kind %s found in the inbound queue", kind.name)
        except Exception:
            self.errors += 1
            log.exception("the app raised handling %s from connection %#x", kind.name, conn)


def load_app(spec: str) -> Any:
    """The class or factory named by ``--app`` (``echo``, ``chat`` or
    ``MODULE:ATTR``)."""
    target = BUILTIN_APPS.get(spec, spec)
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(
            f"--app {spec!r}: give echo, chat, or MODULE:ATTR (a class or factory in an "
            f"importable module)",
            option="--app",
            value=spec,
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(
            f"--app {spec!r}: cannot import {module_name!r} ({err}); is it on PYTHONPATH?",
            option="--app",
            value=spec,
        ) from None
    try:
        factory = getattr(module, attr)
    except AttributeError:
        raise ConfigError(
            f"--app {spec!r}: module {module_name!r} has no attribute {attr!r}",
            option="--app",
            value=spec,
        ) from None
    if not callable(factory):
        raise ConfigError(
            f"--app {spec!r}: {attr!r} is not a class or factory", option="--app", value=spec
        )
    return factory


def check_app(factory: Any, spec: str) -> None:
    """Make the app once, as the logic process will, and check that it has
    handlers: a bad ``--app`` is a clear error before the server listens."""
    try:
        app = factory()
    except Exception as err:
        raise ConfigError(
            f"--app {spec!r}: making the app failed: {type(err).__name__}: {err}",
            option="--app",
            value=spec,
        ) from None
    handlers = [name for name in ("on_open", "on_message", "on_close") if hasattr(app, name)]
    if not handlers:
        raise ConfigError(
            f"--app {spec!r}: the app has none of on_open, on_message, on_close",
            option="--app",
            value=spec,
        )
    for name in handlers:
        if not callable(getattr(app, name)):
            raise ConfigError(f"--app {spec!r}: {name} is not callable", option="--app", value=spec)
