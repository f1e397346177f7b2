"""What ``tools.chaos`` saw, in numbers and in a picture (no dependencies).

``Report`` collects the counts of a run, the faults (time, what) and every
reply's (received, latency, sent) times; ``recovery_times`` says, for each
fault, how long until the first reply to a request *sent after it* (replies
already queued when the fault hit do not count as recovery).  ``write_svg``
draws the slowest reply of every 50 ms over time on a log scale, with the
faults as red lines: an SVG written by hand, so the tool needs nothing
beyond the standard library.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any


def percentile(values: list[float], p: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


@dataclass
class Report:
    requests: int = 0
    replies: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    corrupted: int = 0
    disconnects: int = 0
    in_flight_at_disconnect: int = 0
    restarts: int = 0
    seconds: float = 0.0
    kills: list[tuple[float, str]] = field(default_factory=list)
    latencies: list[tuple[float, float, float]] = field(default_factory=list)  # got, latency, sent
    kill_to_reply: list[float] = field(default_factory=list)

    def recovery_times(self) -> list[float]:
        by_sent = sorted(self.latencies, key=lambda e: e[2])
        sent = [e[2] for e in by_sent]
        out = []
        for at, _ in self.kills:
            i = bisect.bisect_right(sent, at)
            later = by_sent[i : i + 5000]
            if later:
                out.append(min(e[0] for e in later) - at)
        return out

    def failed(self) -> bool:
        return bool(self.lost or self.duplicated or self.reordered or self.corrupted)

    def summary(self) -> dict[str, Any]:
        rec = self.kill_to_reply
        return {
            "seconds": round(self.seconds, 1),
            "faults": len(self.kills),
            "requests": self.requests,
            "replies": self.replies,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "reordered": self.reordered,
            "corrupted": self.corrupted,
            "client_disconnects": self.disconnects,
            "in_flight_at_disconnect": self.in_flight_at_disconnect,
            "restarts": self.restarts,
            "kill_to_next_reply_ms": {
                "p50": round(percentile(rec, 50) * 1000, 1),
                "p99": round(percentile(rec, 99) * 1000, 1),
                "max": round(max(rec) * 1000, 1) if rec else math.nan,
            },
        }

    def text(self) -> str:
        s = self.summary()
        k = s["kill_to_next_reply_ms"]
        return "\n".join(
            [
                f"{s['faults']} faults in {s['seconds']} s; {s['restarts']} restarts",
                f"requests {s['requests']}  replies {s['replies']}  lost {s['lost']}  "
                f"duplicated {s['duplicated']}  reordered {s['reordered']}  "
                f"corrupted {s['corrupted']}",
                f"client disconnects {s['client_disconnects']} "
                f"({s['in_flight_at_disconnect']} requests in flight on them)",
                f"fault -> next reply: p50 {k['p50']} ms  p99 {k['p99']} ms  max {k['max']} ms",
                "verdict: " + ("FAILED" if self.failed() else "nothing lost or duplicated"),
            ]
        )


def write_svg(path: str, report: Report, start: float, bucket: float = 0.05) -> None:
    width, height, left, bottom = 900, 320, 60, 40
    plot_w, plot_h = width - left - 20, height - bottom - 20
    span = max(report.seconds, 1.0)
    worst: dict[int, float] = {}
    for got, latency, _ in report.latencies:
        b = int((got - start) / bucket)
        worst[b] = max(worst.get(b, 0.0), latency)
    low, high = math.log10(1e-4), math.log10(10.0)  # 0.1 ms .. 10 s

    def x(t: float) -> float:
        return left + plot_w * min(max(t / span, 0.0), 1.0)

    def y(latency: float) -> float:
        v = (math.log10(max(latency, 1e-4)) - low) / (high - low)
        return 20 + plot_h * (1 - min(max(v, 0.0), 1.0))

    points = " ".join(f"{x(b * bucket):.1f},{y(v):.1f}" for b, v in sorted(worst.items()))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="14">slowest reply per {bucket * 1000:.0f} ms; red: faults</text>',
    ]
    for ms in (0.1, 1, 10, 100, 1000, 10000):
        yy = y(ms / 1000)
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#ddd"/>'
        )
        parts.append(f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end">{ms:g} ms</text>')
    for sec in range(0, int(span) + 1, max(1, int(span) // 10)):
        parts.append(
            f'<text x="{x(sec):.1f}" y="{height - 20}" text-anchor="middle">{sec} s</text>'
        )
    for at, what in report.kills:
        xx = x(at - start)
        parts.append(
            f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="20" y2="{20 + plot_h}" stroke="red" '
            f'stroke-opacity="0.5"><title>{what}</title></line>'
        )
    parts.append(f'<polyline fill="none" stroke="#1f5fbf" stroke-width="1.2" points="{points}"/>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts) + "\n")
