"""Two bus relays, each a program of its own, on the loopback addresses
127.0.0.2 (host h1) and 127.0.0.3 (host h2); both hosts' shared memory is
this machine's.  Messages cross from an endpoint on h1 to one on h2 while
the relays are SIGKILLed and restarted: each arrives exactly once, in order.
(``test_bus_hosts.py`` does the same across network namespaces.)"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.bus import Bus
from tools.busrig import Relays, numbered, receive, remove_queues, start_sender, write_config

pytestmark = pytest.mark.timeout(120)


def _free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[Relays]:
    listens = {h: f"{ip}:{_free_port(ip)}" for h, ip in (("h1", "127.0.0.2"), ("h2", "127.0.0.3"))}
    config = write_config(tmp_path / "bus.toml", listens, {"1.0.0.1": "h1", "2.0.0.1": "h2"})
    relays = Relays(config)
    relays.start("h1")
    relays.start("h2")
    try:
        yield relays
    finally:
        relays.stop()
        remove_queues(config)


def test_messages_cross_both_ways(bus: Relays) -> None:
    with Bus.open("2.0.0.1", config=bus.config) as b, Bus.open("1.0.0.1", config=bus.config) as a:
        for i in range(500):
            assert a.send("2.0.0.1", numbered(i, "1.0.0.1"), timeout=5)
        receive(b, "1.0.0.1", 500, timeout=10)
        assert b.send("1.0.0.1", b"and back")
        assert a.recv(timeout=10) == ("2.0.0.1", b"and back")


def test_each_message_once_in_order_while_relays_are_killed(bus: Relays) -> None:
    n = 100_000
    with Bus.open("2.0.0.1", config=bus.config) as b:
        sender = start_sender(bus.config, "1.0.0.1", "2.0.0.1", n)
        errors: list[BaseException] = []

        def read() -> None:
            try:
                receive(b, "1.0.0.1", n, timeout=20)
            except BaseException as err:  # reported below
                errors.append(err)

        reader = threading.Thread(target=read)
        reader.start()
        rng = random.Random()
        kills = 0
        while reader.is_alive() and kills < 6:
            time.sleep(rng.uniform(0.05, 0.25))
            host = rng.choice(["h1", "h2"])
            bus.kill(host)
            kills += 1
            time.sleep(rng.uniform(0.0, 0.3))  # the link is down meanwhile
            bus.start(host)
        reader.join(60)
        if sender.poll() is None and (errors or reader.is_alive()):
            sender.kill()  # stuck behind a failure: it must not outlive the test
        assert not errors, errors[0]  # a duplicate, a gap or a torn message: which one
        assert not reader.is_alive()
        assert sender.wait(60) == 0
        assert b.recv(timeout=0.5) is None  # nothing twice
        assert kills >= 3, "the stream ended before the relays were killed"
        assert not bus.tracebacks()
