"""The bus across hosts made as network namespaces joined by veth pairs
(``helpers.hosts``; loopback addresses where namespaces cannot be made: the
test ids and output say which).  Relays run inside their hosts, are
SIGKILLed and restarted, and links are taken down and up: every message
arrives exactly once, in order, one way and both ways at once."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.bus import Bus
from tools.busrig import Relays, receive, remove_queues, start_sender, write_config
from tools.hosts import MODE, Hosts, make_hosts

pytestmark = pytest.mark.timeout(150)
PORT = 7301


@pytest.fixture
def two_hosts(tmp_path: Path) -> Iterator[tuple[Hosts, Relays]]:
    hosts = make_hosts(2)
    print(f"hosts: {hosts.mode} {hosts.addresses}")
    port = PORT if hosts.mode == "netns" else 20000 + random.randint(0, 20000)
    listens = {f"h{i + 1}": f"{ip}:{port}" for i, ip in enumerate(hosts.addresses)}
    config = write_config(tmp_path / "bus.toml", listens, {"1.0.0.1": "h1", "2.0.0.1": "h2"})
    relays = Relays(config, {f"h{i + 1}": hosts.prefix(i) for i in range(2)})
    try:
        relays.start("h1")
        relays.start("h2")
        yield hosts, relays
    finally:
        relays.stop()
        remove_queues(config)
        hosts.remove()


def _faults(
    hosts: Hosts, relays: Relays, until: threading.Event, kills: int, drops: int
) -> dict[str, int]:
    """Kill relays and (namespaces only) drop links, in random order, until
    ``until`` is set or all are done; returns what was done."""
    rng = random.Random()
    plan = ["kill"] * kills + (["drop"] * drops if hosts.mode == "netns" else [])
    rng.shuffle(plan)
    done = {"kill": 0, "drop": 0}
    for fault in plan:
        time.sleep(rng.uniform(0.1, 0.4))
        if until.is_set():
            break
        i = rng.randrange(2)
        if fault == "kill":
            relays.kill(f"h{i + 1}")
            time.sleep(rng.uniform(0.0, 0.3))
            relays.start(f"h{i + 1}")
        else:
            hosts.drop(i)
            time.sleep(rng.uniform(0.5, 1.5))
            hosts.restore(i)
        done[fault] += 1
    return done


@pytest.mark.parametrize("mode", [MODE])
@pytest.mark.parametrize("both_ways", [False, True], ids=["one-way", "both-ways"])
def test_every_message_once_in_order_through_kills_and_link_drops(
    two_hosts: tuple[Hosts, Relays], mode: str, both_ways: bool
) -> None:
    hosts, relays = two_hosts
    n = 60_000
    pairs = [("1.0.0.1", "2.0.0.1")] + ([("2.0.0.1", "1.0.0.1")] if both_ways else [])
    inboxes = {target: Bus.open(target, config=relays.config) for _, target in pairs}
    senders = [start_sender(relays.config, s, t, n) for s, t in pairs]
    errors: list[BaseException] = []
    finished = threading.Event()

    def read(source: str, target: str) -> None:
        try:
            receive(inboxes[target], source, n, timeout=30)
        except BaseException as err:  # reported below
            errors.append(err)

    readers = [threading.Thread(target=read, args=pair) for pair in pairs]
    try:
        for r in readers:
            r.start()
        done = _faults(hosts, relays, finished, kills=5, drops=3)
        for r in readers:
            r.join(90)
        finished.set()
        print(f"{mode}: {done['kill']} relay kills, {done['drop']} link drops")
        assert not errors, errors[0]
        assert not any(r.is_alive() for r in readers), "a reader did not finish"
        assert all(s.wait(60) == 0 for s in senders)
        assert all(inbox.recv(timeout=0.3) is None for inbox in inboxes.values())  # nothing twice
        assert done["kill"] >= 2
        assert not relays.tracebacks()
    finally:
        finished.set()
        for s in senders:
            if s.poll() is None:
                s.kill()
                s.wait()
        for inbox in inboxes.values():
            inbox.close()


@pytest.mark.parametrize("mode", [MODE])
def test_three_hosts_each_sending_to_the_next(tmp_path: Path, mode: str) -> None:
    hosts = make_hosts(3)
    print(f"hosts: {hosts.mode} {hosts.addresses}")
    port = PORT if hosts.mode == "netns" else 20000 + random.randint(0, 20000)
    names = ["h1", "h2", "h3"]
    listens = {h: f"{ip}:{port}" for h, ip in zip(names, hosts.addresses, strict=True)}
    endpoints = {f"{i + 1}.0.0.1": h for i, h in enumerate(names)}
    config = write_config(tmp_path / "bus.toml", listens, endpoints)
    relays = Relays(config, {h: hosts.prefix(i) for i, h in enumerate(names)})
    pairs = [("1.0.0.1", "2.0.0.1"), ("2.0.0.1", "3.0.0.1"), ("3.0.0.1", "1.0.0.1")]
    n = 20_000
    inboxes: dict[str, Bus] = {}
    senders = []
    try:
        for h in names:
            relays.start(h)
        inboxes = {t: Bus.open(t, config=config) for _, t in pairs}
        senders = [start_sender(config, s, t, n) for s, t in pairs]
        rng = random.Random()
        for _ in range(3):
            time.sleep(rng.uniform(0.1, 0.3))
            host = rng.choice(names)
            relays.kill(host)
            relays.start(host)
        for source, target in pairs:
            receive(inboxes[target], source, n, timeout=30)
        assert all(s.wait(60) == 0 for s in senders)
        assert all(b.recv(timeout=0.3) is None for b in inboxes.values())
        assert not relays.tracebacks()
    finally:
        for s in senders:
            if s.poll() is None:
                s.kill()
                s.wait()
        for b in inboxes.values():
            b.close()
        relays.stop()
        remove_queues(config)
        hosts.remove()
