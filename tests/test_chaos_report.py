"""The chaos tool's arithmetic: recovery after a fault, the verdict, the picture."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.chaos import parse_every
from tools.chaos_report import Report, percentile, write_svg


def test_recovery_is_the_first_reply_to_a_request_sent_after_the_fault() -> None:
    r = Report()
    r.kills = [(10.0, "kill logic")]
    # (received, latency, sent): a reply queued before the fault arrives at
    # 10.01 but does not count; the first request sent after it is answered at 10.2
    r.latencies = [(10.01, 0.02, 9.99), (10.3, 0.25, 10.05), (10.2, 0.15, 10.05), (11.0, 0.1, 10.9)]
    assert r.recovery_times() == [pytest.approx(0.2)]


def test_any_loss_duplicate_reorder_or_corruption_fails_the_run() -> None:
    assert not Report(replies=5).failed()
    for field in ("lost", "duplicated", "reordered", "corrupted"):
        assert Report(**{field: 1}).failed()  # type: ignore[arg-type]


def test_percentiles_and_every() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert parse_every("0.2-1.0s") == (0.2, 1.0) and parse_every("0.5") == (0.5, 0.5)


def test_the_plot_is_an_svg_with_the_faults_marked(tmp_path: Path) -> None:
    r = Report(seconds=2.0, kills=[(101.0, "kill logic")])
    r.latencies = [(100.0 + i / 10, 0.001 * i, 100.0) for i in range(20)]
    out = tmp_path / "chaos.svg"
    write_svg(str(out), r, start=100.0)
    text = out.read_text()
    assert text.startswith("<svg") and text.rstrip().endswith("</svg>")
    assert "<title>kill logic</title>" in text and "<polyline" in text
