"""Window shapes, the clock and the API's checks, without a broker."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eos import JSON, Hopping, Job, Tumbling
from eos.errors import ConfigurationError
from service.eventtime.clock import NO_TIME, EventClock, marker_header, time_header, time_of
from service.job.planner import plan


@given(ts=st.integers(0, 2**45), size=st.integers(1, 10**7))
def test_a_timestamp_falls_in_exactly_one_tumbling_window_aligned_to_the_epoch(ts, size):
    (start,) = Tumbling(size).starts(ts)
    assert start <= ts < start + size and start % size == 0


@given(ts=st.integers(0, 2**45), advance=st.integers(1, 10**5), hops=st.integers(1, 20))
def test_a_timestamp_falls_in_size_over_advance_hopping_windows(ts, advance, hops):
    size = advance * hops
    starts = Hopping(size, advance).starts(ts)
    assert len(starts) == hops
    assert all(s <= ts < s + size and s % advance == 0 for s in starts)


def test_window_shapes_and_options_are_checked_when_the_job_is_built():
    with pytest.raises(ConfigurationError, match="advance"):
        Hopping(10, 20)
    keyed = Job("j").source("in", value=JSON).key_by(lambda v: v["k"])
    with pytest.raises(ConfigurationError, match="Tumbling"):
        keyed.window(10_000)
    with pytest.raises(ConfigurationError, match="emit"):
        keyed.window(Tumbling(10)).count(emit="sometimes")


class _Table:
    """A ValueTable's interface over a dict (the clock's persistence is tested with
    RocksDB by the real-broker tests, which kill workers)."""

    def __init__(self) -> None:
        self.rows: dict = {}

    def items(self):
        return iter(self.rows.items())

    def put(self, key, value) -> None:
        self.rows[key] = value


def test_the_clock_is_the_least_of_its_origins_and_never_goes_back():
    table = _Table()
    clock = EventClock(table, origins=3)
    assert clock.watermark == NO_TIME
    assert not clock.observe(0, 5_000) and not clock.observe(1, 9_000)
    assert clock.observe(2, 7_000) and clock.watermark == 5_000
    assert not clock.observe(0, 4_000) and clock.watermark == 5_000
    assert clock.observe(0, 8_000) and clock.watermark == 7_000
    clock.save()  # before every flush of the task's state
    assert EventClock(table, origins=3).watermark == 7_000, "a clock rebuilt from its state lost its progress"


def test_an_idle_origin_stops_holding_the_clock_back_until_it_sends_again():
    table = _Table()
    clock = EventClock(table, origins=2)
    clock.observe(0, 9_000)
    assert clock.watermark == NO_TIME
    assert clock.idle(1) and clock.watermark == 9_000
    clock.save()
    assert EventClock(table, origins=2).watermark == 9_000, "a rebuilt clock forgot the origin is idle"
    assert not clock.observe(1, 2_000) and clock.watermark == 9_000, "the watermark went back"
    assert not clock.observe(0, 12_000) and clock.watermark == 9_000, "the origin back from idle was ignored"
    assert clock.observe(1, 11_000) and clock.watermark == 11_000
    assert not clock.idle(0) and clock.watermark == 11_000


def test_time_headers_round_trip():
    assert time_of(time_header(3, -5, 1_700_000_000_000)) == (3, -5, 1_700_000_000_000)
    assert time_of(marker_header(2, NO_TIME)) == (2, NO_TIME, None)
    assert time_of(marker_header(2, None)) == (2, None, None)
    assert time_of(None) is None


def test_every_stage_feeding_a_window_runs_on_event_time_and_keeps_its_clock():
    job = Job("j")
    (job.source("in", value=JSON).key_by(lambda v: v["k"], uid="by-k")
        .window(Tumbling(1_000)).count(uid="counts").sink("out"))
    stages = plan(job, "g").stages
    assert [s.event_time for s in stages] == [True, True]
    assert stages[0].stateful_uids == ["source-1@clock"] and stages[1].stateful_uids == ["counts", "by-k@clock"]
    plain = Job("p")
    plain.source("in", value=JSON).key_by(lambda v: v["k"]).aggregate(lambda a, v: a, initial=0).sink("out")
    assert not any(s.event_time for s in plan(plain, "g").stages)


@given(origins=st.sampled_from([1, 2, 4]),
       steps=st.lists(st.tuples(st.integers(0, 3), st.one_of(st.none(), st.integers(-50, 1_000))), max_size=60))
def test_the_clock_is_the_running_maximum_of_the_least_active_origin(origins, steps):
    """Against a plain model: each origin's view only rises, an idle origin does not
    count until it sends again, and the task's watermark is the largest least seen."""
    clock = EventClock(_Table(), origins=origins)
    views, idle, watermark = {}, set(), NO_TIME
    for origin, progress in steps:
        origin %= origins
        moved = clock.idle(origin) if progress is None else clock.observe(origin, progress)
        if progress is None:
            idle.add(origin)
        else:
            idle.discard(origin)
            views[origin] = max(progress, views.get(origin, NO_TIME))
        active = [views.get(o, NO_TIME) for o in range(origins) if o not in idle]
        least = min(active) if active else watermark
        assert moved == (least > watermark)
        watermark = max(watermark, least)
        assert clock.watermark == watermark
