"""Hosts for the bus tests and tools: network namespaces joined by veth pairs (root and
``ip`` needed), or, where they cannot be made, loopback addresses.

``make_hosts(n)`` returns ``Hosts``: ``mode`` ("netns" or "loopback", which
the tests print and put in their ids, never a silent skip), each host's
address, ``prefix(i)`` (the command prefix that runs a program *in* host i:
``ip netns exec NAME`` or nothing), ``drop(i)``/``restore(i)`` (take host
i's link down and up: netns only) and ``remove()``.  Only the addresses
given here are used: 10.77.<k>.<i>/24 on a bridge-less star of veth pairs
(host 0 is the hub's peer of every other), or 127.0.0.<i+2>.

System V IPC is not namespaced here: every host's shared memory is this
machine's, which is what lets one test process read every endpoint.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from dataclasses import dataclass, field


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


def netns_possible() -> bool:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    name = f"stcp-probe-{os.getpid()}"
    try:
        _ip("netns", "add", name)
    except (subprocess.CalledProcessError, OSError):
        return False
    subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
    return True


MODE = "netns" if netns_possible() else "loopback"


@dataclass
class Hosts:
    mode: str
    addresses: list[str]
    namespaces: list[str] = field(default_factory=list)
    links: dict[int, tuple[str, str]] = field(default_factory=dict)  # host -> (netns, device)
    routes: dict[int, list[str]] = field(default_factory=dict)  # host -> routes to restore

    def prefix(self, i: int) -> list[str]:
        return ["ip", "netns", "exec", self.namespaces[i]] if self.mode == "netns" else []

    def drop(self, i: int) -> None:
        ns, dev = self.links[i]
        _ip("-n", ns, "link", "set", dev, "down")

    def restore(self, i: int) -> None:
        ns, dev = self.links[i]
        _ip("-n", ns, "link", "set", dev, "up")
        for route in self.routes.get(i, []):  # a link going down took its routes with it
            _ip("-n", ns, "route", "replace", *route.split())

    def remove(self) -> None:
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def make_hosts(n: int) -> Hosts:
    if MODE == "loopback":
        return Hosts("loopback", [f"127.0.0.{i + 2}" for i in range(n)])
    tag = f"{os.getpid() % 10000}{random.randint(0, 99):02d}"
    names = [f"stcp{tag}h{i}" for i in range(n)]
    hosts = Hosts("netns", [], names)
    try:
        for ns in names:
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        # host 0 is joined to each other host by its own veth pair and subnet
        addresses = [""] * n
        for i in range(1, n):
            a, b = f"v{tag}a{i}", f"v{tag}b{i}"
            _ip(
                "link",
                "add",
                a,
                "netns",
                names[0],
                "type",
                "veth",
                "peer",
                "name",
                b,
                "netns",
                names[i],
            )
            _ip("-n", names[0], "addr", "add", f"10.77.{i}.1/24", "dev", a)
            _ip("-n", names[i], "addr", "add", f"10.77.{i}.2/24", "dev", b)
            _ip("-n", names[0], "link", "set", a, "up")
            _ip("-n", names[i], "link", "set", b, "up")
            addresses[i] = f"10.77.{i}.2"
            hosts.links[i] = (names[i], b)
            if i == 1:
                addresses[0] = f"10.77.{i}.1"
                hosts.links[0] = (names[0], a)
        if n > 2:  # the others reach one another through host 0
            _ip("netns", "exec", names[0], "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
            for i in range(1, n):
                route = f"10.77.0.0/16 via 10.77.{i}.1"
                _ip("-n", names[i], "route", "add", *route.split())
                hosts.routes[i] = [route]
        hosts.addresses = addresses
    except BaseException:
        hosts.remove()
        raise
    return hosts
