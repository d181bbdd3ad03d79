"""common/timing.py: the in-process latency loop counts calls as documented (no timing thresholds)."""

from __future__ import annotations

import itertools

from common.timing import time_calls


def _counted():
    made = itertools.count()
    seen: list[int] = []
    return (lambda: next(made)), seen.append, seen


def test_warmups_are_not_returned_and_max_calls_stops_the_loop():
    next_input, call, seen = _counted()
    times = time_calls(call, next_input, warmup=2, min_calls=1, max_calls=5, min_time_s=float("inf"))
    assert len(times) == 5 and all(t >= 0 for t in times)
    assert seen == list(range(7))  # 2 warm-ups, then 5 timed calls, each on a fresh input


def test_min_calls_then_min_time():
    next_input, call, seen = _counted()
    assert len(time_calls(call, next_input, warmup=0, min_calls=3, max_calls=100, min_time_s=0.0)) == 3
    assert len(time_calls(call, next_input, warmup=1, min_calls=1, max_calls=1, min_time_s=0.0)) == 1


def test_a_warmup_slower_than_give_up_is_the_only_timing():
    next_input, call, seen = _counted()
    times = time_calls(call, next_input, warmup=2, min_calls=5, max_calls=50, min_time_s=1.0, give_up_s=-1.0)
    assert len(times) == 1 and seen == [0]
