"""What the bus looks like on one host: its relay, its links, its queues.

``python -m server inspect --bus bus.toml [--host H] [--json]`` and
``python -m server bus stat`` print it.  ``describe_bus(config, host)``
reads, without changing anything, the relay's board (``server.proc.relaysup``:
its processes and each link: state, last sequence sent, acknowledged and
applied, bytes, reconnects) and each inbox and outbox of that host; a
queue or a board that does not exist is shown as such, not made.
``format_bus(dict)`` is the table people read, pure, tested on a dict.
"""

from __future__ import annotations

import time
from typing import Any

from ..core.busconfig import BusConfig
from ..ipc.shm import SHMFactory
from .inspect import describe


def describe_bus(config: BusConfig, host: str) -> dict[str, Any]:
    me = config.host(host)
    info: dict[str, Any] = {"host": me.name, "listen": me.listen, "relay": None}
    key = config.relay_key(me.name)
    if SHMFactory.exists(key):
        with SHMFactory.attach(key) as shm:
            board = describe(shm)
        info["relay"] = {"processes": board.get("processes", {}), "links": board.get("links", {})}
    queues = [("inbox", a, config.inbox_key(a)) for a in config.endpoints_on(me.name)]
    queues += [
        ("outbox", peer, config.outbox_key(me.name, peer))
        for peer in sorted(config.hosts)
        if peer != me.name
    ]
    info["queues"] = []
    for kind, name, qkey in queues:
        entry: dict[str, Any] = {"kind": kind, "name": name, "key": f"0x{qkey:08x}"}
        if SHMFactory.exists(qkey):
            with SHMFactory.attach(qkey) as shm:  # an observer's look: nothing is written
                found = list(describe(shm).get("shared_queues", {}).values())
            s = found[0] if found else {"pending": 0, "used_bytes": 0, "capacity": 0, "popped": 0}
            entry.update(
                pending=s["pending"],
                used=s["used_bytes"],
                capacity=s["capacity"],
                taken=s["popped"],
            )
        info["queues"].append(entry)
    return info


def _since(ms: int, now: float) -> str:
    if not ms:
        return "-"
    seconds = max(0.0, now - ms / 1000)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def format_bus(info: dict[str, Any], now: float | None = None) -> str:
    now = time.time() if now is None else now
    lines = [f"host {info['host']} (relay listens on {info['listen']})"]
    relay = info["relay"]
    if relay is None:
        lines.append("  relay: never started on this machine (python -m server relay)")
    else:
        for role, p in relay["processes"].items():
            state = p.get("state", "?") if p.get("alive", True) or not p["pid"] else "gone"
            age = p.get("heartbeat_age_ms")
            beat = "" if age is None else f", heartbeat {age} ms ago"
            lines.append(
                f"  {role:<10} pid {p['pid'] or '-':<8} {state}{beat}; restarts {p['restarts']} "
                f"(last start: {p['last_start']})"
            )
        lines.append(
            f"  {'link':<14} {'state':<11} {'since':>7} {'sent':>9} {'acked':>9} "
            f"{'applied':>9} {'bytes':>12} {'reconnects':>10}"
        )
        for peer, s in relay["links"].items():
            lines.append(
                f"  {info['host'] + ' -> ' + peer:<14} {s['out_state']:<11} "
                f"{_since(s['out_since'], now):>7} {s['out_sent']:>9} {s['out_acked']:>9} "
                f"{'':>9} {s['out_bytes']:>12} {s['out_reconnects']:>10}"
            )
            lines.append(
                f"  {peer + ' -> ' + info['host']:<14} {s['in_state']:<11} "
                f"{_since(s['in_since'], now):>7} {'':>9} {'':>9} {s['in_applied']:>9} "
                f"{s['in_bytes']:>12} {max(0, s['in_ups'] - 1):>10}"
            )
    for q in info["queues"]:
        what = f"{q['kind']} {q['name'] if q['kind'] == 'inbox' else '-> ' + q['name']}"
        if "pending" not in q:
            lines.append(f"  {what:<28} {q['key']}  not made yet")
            continue
        taken = "acknowledged by the peer" if q["kind"] == "outbox" else "received"
        lines.append(
            f"  {what:<28} {q['key']}  {q['pending']} waiting, {q['used']}/{q['capacity']} bytes, "
            f"{q['taken']} {taken}"
        )
    return "\n".join(lines)
