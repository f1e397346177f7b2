"""``python -m server inspect``: what is in a segment, read without changing it.

``describe(shm)`` walks the directory and opens every object as an observer
through its kind (``server.ipc.segment.KINDS``, see ``server.core.placed``);
each object reports what it knows, and the reports merge into one dict
(``--json`` prints it as it is).  ``format_status(dict) -> str`` turns that
dict into the table people read; it is pure, so it is tested on a dict.
"""

from __future__ import annotations

import time
from typing import Any

from ..core.placed import merge_report
from ..core.setaside import SetAsideLog
from ..ipc.procinfo import alive
from ..ipc.segment import KINDS
from ..ipc.shm import SharedMemory


def describe(shm: SharedMemory, *, set_aside: bool = False) -> dict[str, Any]:
    """Everything in the segment, read without changing it (``set_aside``:
    also the requests kept by the set-aside log, payloads included)."""
    header = shm.header
    info: dict[str, Any] = {
        "segment": shm.stat(),
        "start_mode": header.last_mode.name.lower() if header.last_mode else None,
        "generation": header.generation,
        "header_complete": header.ready,
        "objects": [],
        "queues": {},
    }
    for p in shm.placements():
        info["objects"].append(
            {
                "name": p.name,
                "kind": p.kind,
                "offset": p.offset,
                "size": p.size,
                "initialised": p.done,
            }
        )
        kind = KINDS.get(p.kind)
        if kind is None or not p.done:  # someone else's kind, or a crashed INIT: show, skip
            shm.skip()
            continue
        obj = kind.place(shm, p.name, kind.param_of(p.size), observer=True)
        merge_report(info, obj.report(p.name))
        if set_aside and isinstance(obj, SetAsideLog):
            info["set_aside_requests"] = [_printable(e) for e in obj.entries()]
    now_ms = int(time.monotonic() * 1000)  # CLOCK_MONOTONIC: the workers' clock too
    for proc in info.get("processes", {}).values():
        proc["alive"] = alive(proc["pid"])
        beat_at, busy_since = proc.pop("beat_at_ms", 0), proc.pop("busy_since_ms", 0)
        proc["heartbeat_age_ms"] = max(0, now_ms - beat_at) if beat_at and proc["pid"] else None
        conn = proc.pop("busy_conn", 0)
        if busy_since and proc["pid"]:
            proc["in_flight"] = {"conn": conn, "age_ms": max(0, now_ms - busy_since)}
    if "inbound" in info["queues"]:
        info["codes_processed"] = info["queues"]["inbound"]["popped"]
    open_conns = set(info.pop("open_conns", []))
    if "streams" in info:  # the ledger keeps a closed slot's last connection: leave it out
        info["streams"] = {
            f"{conn:#x}": counts for conn, counts in info["streams"].items() if conn in open_conns
        }
        wall = time.time()
        for counts in info["streams"].values():
            opened = counts.get("opened_at", 0)
            counts["age_s"] = round(max(0.0, wall - opened), 1) if opened else None
    return info


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _printable(entry: dict[str, Any]) -> dict[str, Any]:
    payload = entry.pop("payload", None)
    if payload is not None:
        entry["payload_hex"] = payload.hex()
        entry["payload_text"] = payload.decode("utf-8", "replace")
    return entry


def format_set_aside(entries: list[dict[str, Any]]) -> str:
    """The requests set aside as poison, one block each."""
    if not entries:
        return "no request has been set aside"
    lines = []
    for e in entries:
        if "unreadable" in e:
            lines.append(f"(unreadable: {e['unreadable']})")
            continue
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["at_ms"] / 1000))
        kept = len(e["payload_hex"]) // 2
        lines.append(
            f"{when}  connection {e['conn']:#x}  {e['size']} bytes ({kept} kept)  "
            f"after {e['attempts']} attempts"
        )
        lines.append(f"    {e['payload_text'][:200]!r}")
    return "\n".join(lines)


STREAMS_SHOWN = 20


def format_status(info: dict[str, Any]) -> str:
    """The inspector's table, from ``describe``'s dict."""
    seg = info["segment"]
    lines = [
        f"segment  key {seg['key']}  id {seg['id']}  {seg['size']} bytes  mode {seg['mode']}",
        f"         attached by {seg['attached']} other process(es); last start {info['start_mode']}, "
        f"generation {info['generation']}",
    ]
    if "processes" in info:
        lines += [
            "",
            f"{'process':<11} {'pid':>8} {'state':<12} {'beat age':>9} {'restarts':>13}  last start",
        ]
        for role, p in info["processes"].items():
            state = p.get("state", "?") if p["alive"] or not p["pid"] else "gone"
            age = p.get("heartbeat_age_ms")
            restarts = f"{p.get('restarts_this_run', 0)} run/{p['restarts']} all"
            lines.append(
                f"{role:<11} {p['pid'] or '-':>8} {state:<12} "
                f"{'-' if age is None else f'{age} ms':>9} {restarts:>13}  {p['last_start']}"
            )
        for role, p in info["processes"].items():
            if "in_flight" in p:
                f = p["in_flight"]
                lines.append(
                    f"{role} is running the app for connection {f['conn']:#x} "
                    f"since {f['age_ms']} ms"
                )
    if info["queues"]:
        lines += [
            "",
            f"{'queue':<11} {'pending':>8} {'used':>10} {'free':>10} {'pushed':>10} {'popped':>10}",
        ]
        for name, s in info["queues"].items():
            lines.append(
                f"{name:<11} {s['pending']:>8} {s['used_bytes']:>10} {s['free_bytes']:>10} "
                f"{s['pushed']:>10} {s['popped']:>10}"
            )
    for name, s in info.get("shared_queues", {}).items():
        lines += [
            "",
            f"shared queue {name}: {s['pending']} pending, {s['used_bytes']}/{s['capacity']} bytes "
            f"used, pushed {s['pushed']}, popped {s['popped']}",
            f"  push lock {s['push_lock']['state']}; pop lock {s['pop_lock']['state']}; "
            f"dead holders repaired: push {s['repairs']['push']}, pop {s['repairs']['pop']}",
        ]
        for w in s["waiters"]:
            gone = "" if w["alive"] else " (gone)"
            lines.append(f"  slot {w['slot']}: pid {w['pid']}{gone} waits for {w['waits_for']}")
    if "connections" in info:
        lines += [
            "",
            f"connections open {info['connections']}; codes processed "
            f"{info.get('codes_processed', 0)}; poison requests set aside {info.get('set_aside', 0)}"
            + (" (inspect --set-aside shows them)" if info.get("set_aside") else ""),
        ]
    if "counters" in info:  # connections_open is in the line above
        counters = {k: v for k, v in info["counters"].items() if k != "connections_open"}
        lines.append("  ".join(f"{k} {v}" for k, v in counters.items()))
    streams = info.get("streams", {})
    if streams:
        lines += [
            "",
            f"{'connection':<14} {'peer':<22} {'age':>8} {'bytes in':>12} {'bytes out':>12} "
            f"{'pending out':>12}",
        ]
        for conn, s in list(streams.items())[:STREAMS_SHOWN]:
            age = "?" if s.get("age_s") is None else _age(s["age_s"])
            kept = "" if s.get("kept", True) else "  (output in memory only: a slow reader)"
            lines.append(
                f"{conn:<14} {s.get('peer', '?'):<22} {age:>8} {s['bytes_in']:>12} "
                f"{s['bytes_out']:>12} {s.get('pending_out', 0):>12}{kept}"
            )
        if len(streams) > STREAMS_SHOWN:
            lines.append(f"... and {len(streams) - STREAMS_SHOWN} more (--json shows all)")
    lines += ["", f"{'object':<11} {'kind':<12} {'offset':>8} {'size':>9}"]
    for o in info["objects"]:
        unfinished = "" if o.get("initialised", True) else "  (INIT never finished)"
        lines.append(f"{o['name']:<11} {o['kind']:<12} {o['offset']:>8} {o['size']:>9}{unfinished}")
    return "\n".join(lines)
