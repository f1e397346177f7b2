"""The bus across hosts made as network namespaces joined by veth pairs
(``tools.hosts``; loopback addresses where namespaces cannot be made, and
then no link drops: the test ids say which), in short runs of the bus's
chaos tool (``tools.chaos_bus``; its long run is the issue's 200,000
messages, 10 kills, 5 link drops).  Relays run inside their hosts, are
SIGKILLed and restarted, and links are taken down and up: every message
arrives exactly once, in order: one way, both ways at once, three hosts."""

from __future__ import annotations

import pytest

from tools.chaos_bus import run
from tools.hosts import MODE

pytestmark = pytest.mark.timeout(150)


@pytest.mark.parametrize("mode", [MODE])
@pytest.mark.parametrize(
    ("hosts", "both_ways"),
    [(2, False), (2, True), (3, False)],
    ids=["one-way", "both-ways", "three-hosts"],
)
def test_every_message_once_in_order_through_kills_and_link_drops(
    mode: str, hosts: int, both_ways: bool
) -> None:
    report = run(messages=30_000, kills=4, drops=2, hosts_n=hosts, both_ways=both_ways, limit=100)
    print(report)
    assert report["ok"], report["problems"]
    assert report["hosts"].startswith(mode)
    assert report["relay kills"] == 4
    assert report["of which the relay process (restarted by its supervisor)"] == 2
    if mode == "netns":
        assert report["link drops"] == 2
