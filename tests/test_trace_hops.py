"""The hop breakdown of ``tools.bench_server --trace`` (``tools.trace_hops``):
matching each request's events by time, on made-up timestamps."""

from __future__ import annotations

from tools.trace_hops import HOPS, hops


def test_each_request_gets_the_first_event_of_each_kind_inside_its_round_trip() -> None:
    us = 1000
    requests = [(0, 100 * us), (200 * us, 300 * us), (400 * us, 500 * us)]
    events = []
    for start in (0, 200 * us):  # the first two requests: every hop 10 µs, then 40 to the reply
        for k, kind in enumerate(("read", "pushed", "step", "replied", "deliver", "write")):
            events.append((kind, start + (k + 1) * 10 * us))
    events.append(("read", 15 * us))  # a second read inside the first request: not its read
    events += [("read", 410 * us), ("pushed", 420 * us)]  # the third one lacks the rest
    per_hop, left_out = hops(requests, events)
    assert left_out == 1
    assert per_hop[HOPS[0][0]] == [10.0, 10.0]
    assert per_hop[HOPS[-1][0]] == [40.0, 40.0]
    assert all(v == [10.0, 10.0] for name, v in per_hop.items() if name not in (HOPS[-1][0],))


def test_a_look_that_began_before_the_other_side_finished_counts_as_zero() -> None:
    events = [("read", 10), ("pushed", 30), ("step", 25), ("replied", 40), ("deliver", 50)]
    events.append(("write", 60))
    per_hop, left_out = hops([(0, 100)], events)
    assert left_out == 0
    assert per_hop["queued -> logic steps (its wake-up)"] == [0.0]
    assert per_hop["logic: take it, the app, publish"] == [0.01]  # from the push, not before


def test_the_tool_traces_a_real_server_hop_by_hop() -> None:
    """Run against ``python -m server run`` with ``STCP_TRACE``: every hop
    of most requests is found (the wrappers fit what they wrap; a process
    that was already looking may note a step before the request was sent,
    and on a busy machine one in ten is left out so)."""
    import glob
    import tempfile

    from tools.trace_hops import run

    pattern = f"{tempfile.gettempdir()}/stcp-trace-*"
    before = set(glob.glob(pattern))
    r = run(n=200, warmup=20)
    assert set(glob.glob(pattern)) == before  # its folder of trace files is gone
    assert set(r["hops"]) == {name for name, _, _ in HOPS}
    assert r["left_out"] < 100, r
    assert 0 < sum(r["hops"].values()) <= r["ours_p50"] * 1.5, r
