"""Chaos for the bus: relays killed and links dropped under a verified stream.

    python -m tools.chaos_bus                                # 200,000 messages h1 -> h2
    python -m tools.chaos_bus --both-ways --kills 10 --drops 5
    python -m tools.chaos_bus --hosts 3 --messages 100000    # each host to the next

It makes the hosts (network namespaces joined by veth pairs, as root; else
loopback addresses, and then no link drops: it says which), runs one relay
in each, and sends ``--messages`` numbered, checksummed messages from an
endpoint on each sending host (programs of their own) while it
``SIGKILL``s a random relay ``--kills`` times (every other one the relay
process, which its supervisor restarts; the others the whole relay
program, which this tool starts again at once), and
takes a random host's link down ``--drops`` times for 0.5-2 s, at random
moments.  Every message must arrive exactly once and in order.  Exit status
1 otherwise.  Every run is bounded in time (``--limit``); whatever it made
(namespaces, queues, processes) is removed at the end.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from server.bus import Bus
from tools.busrig import Relays, receive, remove_queues, start_sender, write_config
from tools.hosts import make_hosts

PORT = 7301


def run(
    messages: int, kills: int, drops: int, hosts_n: int, both_ways: bool, limit: float
) -> dict[str, Any]:
    hosts = make_hosts(hosts_n)
    names = [f"h{i + 1}" for i in range(hosts_n)]
    port = PORT if hosts.mode == "netns" else 20000 + random.randint(0, 20000)
    listens = {h: f"{ip}:{port}" for h, ip in zip(names, hosts.addresses, strict=True)}
    endpoints = {f"{i + 1}.0.0.1": h for i, h in enumerate(names)}
    folder = Path(tempfile.mkdtemp(prefix="stcp-bus-chaos-"))
    config = write_config(folder / "bus.toml", listens, endpoints)
    relays = Relays(config, {h: hosts.prefix(i) for i, h in enumerate(names)})
    addresses = list(endpoints)
    if hosts_n == 2:
        pairs = [(addresses[0], addresses[1])] + (
            [(addresses[1], addresses[0])] if both_ways else []
        )
    else:  # each to the next, round the ring
        pairs = [(addresses[i], addresses[(i + 1) % hosts_n]) for i in range(hosts_n)]
    inboxes: dict[str, Bus] = {}
    senders = []
    errors: list[str] = []
    done = {"kills": 0, "drops": 0, "relay processes": 0}
    start = time.monotonic()
    try:
        for h in names:
            relays.start(h)
        inboxes = {t: Bus.open(t, config=config) for _, t in pairs}
        # paced so the stream outlasts the faults: each kill about 0.5 s, each drop 1.5 s
        lasting = 2.0 + kills * 0.6 + (drops * 1.7 if hosts.mode == "netns" else 0)
        rate = messages / lasting
        senders = [start_sender(config, s, t, messages, rate) for s, t in pairs]

        def read(source: str, target: str) -> None:
            try:
                receive(inboxes[target], source, messages, timeout=60)
            except BaseException as err:  # reported
                errors.append(f"{source} -> {target}: {err}")

        readers = [threading.Thread(target=read, args=pair, daemon=True) for pair in pairs]
        for r in readers:
            r.start()
        plan = ["kill"] * kills + (["drop"] * drops if hosts.mode == "netns" else [])
        random.shuffle(plan)
        for fault in plan:
            time.sleep(random.uniform(0.05, 0.2))
            if not any(r.is_alive() for r in readers):
                break
            i = random.randrange(hosts_n)
            if fault == "kill" and done["kills"] % 2 == 0:  # its supervisor restarts it
                relays.kill_relay(names[i])
                time.sleep(random.uniform(0.0, 0.5))
                done["kills"] += 1
                done["relay processes"] += 1
            elif fault == "kill":  # the whole program: started again by hand
                relays.kill(names[i])
                time.sleep(random.uniform(0.0, 0.5))
                relays.start(names[i])
                done["kills"] += 1
            else:
                link = i if i in hosts.links else 1
                hosts.drop(link)
                time.sleep(random.uniform(0.5, 2.0))
                hosts.restore(link)
                done["drops"] += 1
        if done["kills"] + done["drops"] < len(plan):
            errors.append(f"the stream ended after {done} of {len(plan)} faults: pace it slower")
        for r in readers:
            r.join(max(1.0, limit - (time.monotonic() - start)))
        if any(r.is_alive() for r in readers):
            errors.append(f"not every message arrived within {limit} s")
        for s in senders:
            if s.wait(30) != 0:
                errors.append(f"a sender exited with {s.returncode}")
        for target, inbox in inboxes.items():
            extra = inbox.recv(timeout=0.5)
            if extra is not None:
                errors.append(f"{target} got a message more: {extra!r}")
        if relays.tracebacks():
            errors.append("a relay crashed:\n" + relays.tracebacks())
    finally:
        for s in senders:
            if s.poll() is None:
                s.kill()
                s.wait()
        for inbox in inboxes.values():
            inbox.close()
        relays.stop()
        remove_queues(config)
        hosts.remove()
        if not errors:
            shutil.rmtree(folder, ignore_errors=True)  # the relays' logs: kept on a failure
    return {
        "hosts": f"{hosts.mode} {hosts.addresses}",
        "streams": ", ".join(f"{s} -> {t}" for s, t in pairs),
        "messages per stream": messages,
        "relay kills": done["kills"],
        "of which the relay process (restarted by its supervisor)": done["relay processes"],
        "link drops": done["drops"] if hosts.mode == "netns" else "none (loopback addresses)",
        "seconds": round(time.monotonic() - start, 1),
        "ok": not errors,
        "problems": errors + ([f"the relays' logs are in {folder}"] if errors else []),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__[__doc__.index("It makes") :],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--messages", type=int, default=200_000, help="per stream (200,000)")
    parser.add_argument("--kills", type=int, default=10, help="relay kills (10)")
    parser.add_argument("--drops", type=int, default=5, help="link drops of 0.5-2 s (5)")
    parser.add_argument("--hosts", type=int, choices=(2, 3), default=2)
    parser.add_argument("--both-ways", action="store_true", help="two hosts: a stream each way")
    parser.add_argument("--limit", type=float, default=600.0, help="seconds the run may take")
    a = parser.parse_args(argv)
    report = run(a.messages, a.kills, a.drops, a.hosts, a.both_ways, a.limit)
    for name, value in report.items():
        if name != "problems":
            print(f"{name:>20}: {value}")
    for problem in report["problems"]:
        print(f"PROBLEM: {problem}")
    print("ok" if report["ok"] else "FAILED")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
