"""The built-in applications: ``echo`` and ``chat``.

Both are stateless on purpose: the logic process may be killed and restarted
at any moment (see ``server.core.app``), and the list of connected users is kept
by the connect process, which carries out broadcasts.
"""

from __future__ import annotations

from .app import Conn
from .codes import slot_of


class Echo:
    """Every frame is answered by a frame with the same payload."""

    framing = "length"

    def on_message(self, conn: Conn, payload: bytes) -> None:
        conn.send(payload)


class Chat:
    """A chat room: each line a user sends reaches every other user.

    Line framing, so ``nc 127.0.0.1 7000`` (or ``python -m server client``)
    is a chat client.  The sender gets no copy of its own lines.  On a bus
    (``run --bus bus.toml --endpoint chat@h1``) the room spans every server
    of it: their lines arrive prefixed with the server's address.
    """

    framing = "line"
    full_message = "too many users, try again later"

    @staticmethod
    def name(conn: Conn) -> bytes:
        return b"user%d" % slot_of(conn.id)

    def on_open(self, conn: Conn) -> None:
        conn.send(b"* welcome, you are " + self.name(conn))
        conn.broadcast(b"* " + self.name(conn) + b" joined")

    def on_message(self, conn: Conn, payload: bytes) -> None:
        if payload.strip():
            conn.broadcast(self.name(conn) + b": " + payload)

    def on_close(self, conn: Conn) -> None:
        conn.broadcast(b"* " + self.name(conn) + b" left")

    def on_remote(self, source: str, line: bytes) -> bytes:
        """A line from another server of the room (``run --bus``): say whose."""
        return b"[" + source.encode() + b"] " + line
