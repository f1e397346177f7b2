"""The shared queue's chaos, short: writer and reader programs SIGKILLed at
random and at the crash points inside the lock (``tools.chaos_sharedqueue``;
its long run, 100 kills and more, is a tool).  Every code pushed is read
exactly once, nothing torn, each writer's order kept, no lock wait of a
second."""

from __future__ import annotations

import shutil

import pytest

from server.ipc.sharedqueue import CRASH_POINTS
from tools.chaos_sharedqueue import run

pytestmark = pytest.mark.timeout(150)


def test_six_writers_three_readers_killed_24_times() -> None:
    report = run(kills=24, writers=6, readers=3, capacity=1 << 14, seed=None, limit=120)
    try:
        assert report["ok"], report["problems"]
        deaths = report["deaths"]
        assert sum(deaths.values()) >= 24
        assert sum(n for how, n in deaths.items() if "." in how) >= 12  # at the crash points
        assert all(deaths.get(p) for p in CRASH_POINTS)  # every one of them
        # not a speed test: a worker lives 0.1-1 s, much of it starting Python, so on 2
        # busy cores a run moves 400 to 7,000 codes; a few hundred cross every crash point
        assert report["codes_read"] > 200
        assert report["longest_lock_wait_s"] < 1.0
    finally:
        shutil.rmtree(report["folder"], ignore_errors=True)
