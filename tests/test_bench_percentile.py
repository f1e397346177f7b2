"""The latencies of ``tools.bench_server``'s load clients come as runs of
requests that share a send and a reply time: their quantiles are those of
the requests one by one."""

from __future__ import annotations

import math
import random

from tools.bench_server import percentile


def test_quantiles_of_runs_are_the_quantiles_of_their_requests() -> None:
    rnd = random.Random(7)
    for _ in range(200):
        runs = [(rnd.random(), rnd.randint(1, 16)) for _ in range(rnd.randint(1, 30))]
        one_by_one = sorted(s for s, n in runs for _ in range(n))
        runs.sort()
        for q in (0.0, 0.5, 0.9, 0.99, 1.0):
            expected = one_by_one[min(len(one_by_one) - 1, int(q * len(one_by_one)))] * 1e6
            assert percentile(runs, q) == expected


def test_no_latencies_is_not_a_number() -> None:
    assert math.isnan(percentile([], 0.5))
