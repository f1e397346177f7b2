"""``server.proc.poller``: epoll with edge-triggered client sockets, on real
TCP sockets over 127.0.0.1."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest

from server.proc.poller import EVENT_READ, EVENT_WRITE, HANGUP, Poller


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    server.setblocking(False)
    yield client, server
    client.close()
    server.close()


def ready(poller: Poller, timeout: float = 0.2) -> list[tuple[object, int]]:
    return [(key.data, events) for key, events in poller.select(timeout)]


def test_an_edge_triggered_socket_is_reported_at_new_bytes_not_at_old_ones(pair) -> None:  # type: ignore[no-untyped-def]
    client, server = pair
    with Poller() as poller:
        poller.register(server, EVENT_READ, "c", edge=True)
        assert ready(poller, 0) == []
        client.sendall(b"one")
        assert ready(poller) == [("c", EVENT_READ)]
        assert server.recv(3, socket.MSG_PEEK) == b"one"  # still there ...
        assert ready(poller, 0.05) == []  # ... and not reported again
        client.sendall(b"two")
        assert ready(poller) == [("c", EVENT_READ)]


def test_a_level_triggered_socket_is_reported_while_bytes_wait(pair) -> None:  # type: ignore[no-untyped-def]
    client, server = pair
    with Poller() as poller:
        poller.register(server, EVENT_READ, "c")
        client.sendall(b"one")
        assert ready(poller) == [("c", EVENT_READ)]
        assert ready(poller) == [("c", EVENT_READ)]


def test_changing_the_events_reports_a_ready_socket_again(pair) -> None:  # type: ignore[no-untyped-def]
    client, server = pair
    with Poller() as poller:
        poller.register(server, EVENT_READ, "c", edge=True)
        client.sendall(b"waiting")
        assert ready(poller) == [("c", EVENT_READ)]
        poller.modify(server, EVENT_WRITE, "c")  # reading paused ...
        assert ready(poller) == [("c", EVENT_WRITE)]
        poller.modify(server, EVENT_READ, "c")  # ... and resumed: the bytes are seen
        assert ready(poller) == [("c", EVENT_READ)]


@pytest.mark.parametrize("how", ["close", "reset"])
def test_a_hang_up_is_flagged(pair, how: str) -> None:  # type: ignore[no-untyped-def]
    client, server = pair
    with Poller() as poller:
        poller.register(server, EVENT_READ, "c", edge=True)
        client.sendall(b"last words")
        if how == "reset":
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        assert ready(poller) == [("c", EVENT_READ | HANGUP)]


def test_bad_registrations_are_refused(pair) -> None:  # type: ignore[no-untyped-def]
    _client, server = pair
    with Poller() as poller:
        with pytest.raises(ValueError, match="invalid events"):
            poller.register(server, 0)
        poller.register(server, EVENT_READ)
        with pytest.raises(KeyError, match="already registered"):
            poller.register(server, EVENT_READ)
        poller.unregister(server)
        with pytest.raises(KeyError, match="not registered"):
            poller.modify(server, EVENT_READ)
        server.close()
        with pytest.raises(KeyError, match="not registered"):
            poller.unregister(server)  # closed, and never (or no longer) registered
