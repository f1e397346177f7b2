"""``tools.bench_codequeue`` with ``--rounds``: every transport is timed
that many times, taking turns, and each round's ratio is to the Pipe of
the same round (a noisy machine moves them all at once)."""

from __future__ import annotations

import pytest

from tools import bench_codequeue


@pytest.mark.timeout(120)
def test_rounds_print_medians_and_one_ratio_per_round(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--seconds", "0.05", "--sizes", "64", "--rounds", "3", "--pings", "50"]
    assert bench_codequeue.main(argv) == 0
    out = capsys.readouterr().out
    header, *lines = out.split("\n\n")[1].splitlines()  # the table of the one size
    assert "x Pipe by round" in header
    rows = [line.split() for line in lines]
    pipe = next(r for r in rows if r[0] == "multiprocessing.Pipe")
    assert pipe[-3:] == ["1.00", "1.00", "1.00"], pipe  # each round against its own Pipe
    queue = next(r for r in rows if r[:2] == ["CodeQueue", "1/call"])
    assert all(float(x) > 0 for x in queue[-3:]), queue


def test_rounds_below_one_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bench_codequeue.main(["--rounds", "0"])
    assert exc.value.code == 2
    assert "--rounds must be at least 1, not 0" in capsys.readouterr().err
