"""``python -m server inspect``: what is in a segment, read without changing it.

``describe(shm)`` walks the directory and opens every object as an observer
through its kind (``server.ipc.segment.KINDS``, see ``server.core.placed``);
each object reports what it knows, and the reports merge into one dict
(``--json`` prints it as it is).  ``format_status(dict) -> str`` turns that
dict into the table people read; it is pure, so it is tested on a dict.
"""

from __future__ import annotations

import os
from typing import Any

from ..core.placed import merge_report
from ..ipc.segment import KINDS
from ..ipc.shm import SharedMemory


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe(shm: SharedMemory) -> dict[str, Any]:
    """Everything in the segment, read without changing it."""
    header = shm.header
    info: dict[str, Any] = {
        "segment": shm.stat(),
        "start_mode": header.last_mode.name.lower() if header.last_mode else None,
        "generation": header.generation,
        "ready": header.ready,
        "objects": [],
        "queues": {},
    }
    for p in shm.placements():
        info["objects"].append({"name": p.name, "kind": p.kind, "offset": p.offset, "size": p.size})
        kind = KINDS.get(p.kind)
        if kind is None:  # placed by someone else's configuration: show it, skip it
            shm.place(p.name, p.kind, p.size)
            continue
        obj = kind.place(shm, p.name, kind.param_of(p.size), observer=True)
        merge_report(info, obj.report(p.name))
    for proc in info.get("processes", {}).values():
        proc["alive"] = _alive(proc["pid"])
    if "inbound" in info["queues"]:
        info["codes_processed"] = info["queues"]["inbound"]["popped"]
    return info


def format_status(info: dict[str, Any]) -> str:
    """The inspector's table, from ``describe``'s dict."""
    seg = info["segment"]
    lines = [
        f"segment  key 0x{seg['key']:08x}  id {seg['id']}  {seg['size']} bytes  mode {seg['mode']}",
        f"         attached by {seg['attached']} process(es); last start {info['start_mode']}, "
        f"generation {info['generation']}",
    ]
    if "processes" in info:
        lines += [
            "",
            f"{'process':<11} {'pid':>8} {'alive':>6} {'restarts':>9} {'heartbeat':>10}  last start",
        ]
        for role, p in info["processes"].items():
            lines.append(
                f"{role:<11} {p['pid'] or '-':>8} {'yes' if p['alive'] else 'no':>6} "
                f"{p['restarts']:>9} {p['heartbeat']:>10}  {p['last_start']}"
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
    if "connections" in info:
        lines += [
            "",
            f"connections open {info['connections']}; codes processed "
            f"{info.get('codes_processed', 0)}; poison codes set aside {info.get('set_aside', 0)}",
        ]
    if "counters" in info:
        lines.append("  ".join(f"{k} {v}" for k, v in info["counters"].items()))
    lines += ["", f"{'object':<11} {'kind':<12} {'offset':>8} {'size':>9}"]
    for o in info["objects"]:
        lines.append(f"{o['name']:<11} {o['kind']:<12} {o['offset']:>8} {o['size']:>9}")
    return "\n".join(lines)
