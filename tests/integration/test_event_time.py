"""Acceptance: late data, allowed lateness, update mode, idle splits and session merging, scripted with TestSource."""

from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd
import pytest

import raystream as rs
from raystream.testing import ListSink, TestSource

pytestmark = pytest.mark.usefixtures("ray_local")

T0 = datetime(2026, 3, 1, 12, 0, 0)
ONE = rs.RunConfig(parallelism=1)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def click(user: str, seconds: float, value: int = 1) -> dict[str, object]:
    return {"user": user, "ts": at(seconds), "value": value}


def windows_of(sink: ListSink) -> list[tuple[str, float, int]]:
    """(user, window start in seconds from T0, count), in emission order."""
    return [(r["user"], (r["window_start"] - T0).total_seconds(), r["n"]) for r in sink.rows()]


def test_a_late_row_goes_to_late_events_and_not_into_its_window() -> None:
    source = (
        TestSource()
        .add_batch([click("a", 1), click("a", 4), click("b", 12)])
        .advance_watermark(at(10))  # the window [0s, 10s) fires here
        .add_batch([click("a", 3, value=100), click("a", 11)])  # 3s is late; 11s is not
        .end()
    )
    windowed = source.stream(time_column="ts").key_by("user").window(rs.Tumbling("10s"), late="side")
    counts = windowed.agg(n=rs.count(), total=rs.sum("value"))
    sink = ListSink()
    job = counts.write(sink, ONE)
    assert sorted(windows_of(sink)) == [("a", 0.0, 2), ("a", 10.0, 1), ("b", 10.0, 1)]
    assert sink.rows()[0]["total"] == 2  # the late value 100 was not counted
    late = job.late_events()
    assert late.to_dict("records") == [{"user": "a", "ts": pd.Timestamp(at(3)), "value": 100}]
    assert job.metrics()["late_rows"] == 1

    # The late rows are also a stream of their own, for any sink.
    late_sink = ListSink()
    counts.late_events().write(late_sink, ONE)
    assert late_sink.rows() == [{"user": "a", "ts": at(3), "value": 100}]


def test_a_row_late_for_some_of_its_sliding_windows_counts_in_the_others() -> None:
    """Windows of 10 s sliding by 4 s: panes of 2 s, each in two or three windows, some closed by the watermark."""
    source = (
        TestSource()
        .add_batch([click("a", 1), click("a", 9)])
        .advance_watermark(at(11))  # [0, 10) fires; [4, 14) and [8, 18) stay open
        .add_batch([click("a", 7)])  # in [0, 10), closed, and [4, 14), open: not late
        .add_batch([click("a", 2, value=100)])  # in [-8, 2), [-4, 6) and [0, 10), all closed: late
        .end()
    )
    windowed = source.stream(time_column="ts").key_by("user").window(rs.Sliding("10s", "4s"), late="side")
    sink = ListSink()
    job = windowed.agg(n=rs.count()).write(sink, ONE)
    assert sorted(windows_of(sink)) == [("a", -8.0, 1), ("a", -4.0, 1), ("a", 0.0, 2), ("a", 4.0, 2), ("a", 8.0, 1)]
    assert job.late_events()["value"].tolist() == [100]


def test_dropped_late_rows_are_counted() -> None:
    source = TestSource().add_batch([click("a", 15)]).advance_watermark(at(20)).add_batch([click("a", 2)]).end()
    counts = source.stream(time_column="ts").key_by("user").window(rs.Tumbling("10s")).agg(n=rs.count())
    job = counts.start(ONE).wait()
    assert job.results()["n"].tolist() == [1]
    assert job.metrics()["late_rows"] == 1


def test_allowed_lateness_refires_the_window_with_the_corrected_value() -> None:
    source = (
        TestSource()
        .add_batch([click("a", 1), click("a", 2)])
        .advance_watermark(at(10))  # fires [0, 10) with n=2
        .add_batch([click("a", 3)])  # late but within 5s of lateness: re-fires with n=3
        .advance_watermark(at(16))  # lateness over: the window is freed
        .add_batch([click("a", 4)])  # now too late
        .end()
    )
    windowed = (
        source.stream(time_column="ts").key_by("user").window(rs.Tumbling("10s"), allowed_lateness="5s", late="side")
    )
    sink = ListSink()
    job = windowed.agg(n=rs.count()).write(sink, ONE)
    assert windows_of(sink) == [("a", 0.0, 2), ("a", 0.0, 3)]
    assert job.late_events()["ts"].tolist() == [pd.Timestamp(at(4))]


def test_update_mode_emits_partial_values_that_converge_to_the_final_one() -> None:
    source = TestSource()
    for second in range(0, 10, 2):  # five epochs of the same window
        source.add_batch([click("a", second), click("a", second + 0.5)])
    source.advance_watermark(at(10)).end()
    windowed = source.stream(time_column="ts").key_by("user").window(rs.Tumbling("10s"), emit="update")
    sink = ListSink()
    windowed.agg(n=rs.count()).write(sink, ONE)
    counts = [n for _, _, n in windows_of(sink)]
    assert counts[:5] == [2, 4, 6, 8, 10]  # one partial value per epoch, growing
    assert counts[-1] == 10  # and the final value when the window closes


def test_an_idle_split_stops_holding_the_watermark_back() -> None:
    def script() -> TestSource:
        source = TestSource(splits=2)
        source.add_batch([click("quiet", 1)], split=1)
        for second in (5, 15, 25, 35):
            source.add_batch([click("busy", second)], split=0)
            source.pause(0.25, split=0)
            source.pause(0.05, split=1).pause(0.05, split=1)  # split 1 stays open longer than split 0, silent
        return source.end()

    def emitted_before_the_end(idle_timeout: str | None) -> set[float]:
        stream = script().stream(time_column="ts").with_watermark("ts", delay="0s", idle_timeout=idle_timeout)
        sink = ListSink()
        stream.key_by("user").window(rs.Tumbling("10s")).agg(n=rs.count()).write(sink, ONE)
        last_epoch = max(sink.epochs())
        return {
            (row["window_start"] - T0).total_seconds()
            for epoch, table in sink.batches
            if epoch < last_epoch
            for row in table.to_pylist()
            if row["user"] == "busy"
        }

    assert emitted_before_the_end(None) == set()  # the silent split holds every window back to the end
    assert emitted_before_the_end("100ms") >= {0.0, 10.0}  # once idle, it no longer does


def test_sessions_merge_when_the_bridging_event_arrives_last() -> None:
    source = (
        TestSource()
        .add_batch([click("a", 0), click("a", 1)])  # session [0, 4)
        .add_batch([click("a", 6), click("a", 7)])  # session [6, 10), separate so far
        .add_batch([click("b", 100)])
        .add_batch([click("a", 3.5)])  # [3.5, 6.5) touches both: one session [0, 10)
        .end()
    )
    # A delay longer than the disorder keeps both sessions open until the bridge arrives.
    events = source.stream(time_column="ts").with_watermark("ts", delay="5m")
    sessions = events.key_by("user").window(rs.Session("3s")).agg(n=rs.count())
    rows = sessions.to_pandas(rs.RunConfig(parallelism=2)).sort_values("user")
    assert rows[["user", "n"]].to_dict("records") == [{"user": "a", "n": 5}, {"user": "b", "n": 1}]
    first = rows.iloc[0]
    assert (first["window_start"], first["window_end"]) == (pd.Timestamp(at(0)), pd.Timestamp(at(10)))


def test_touching_sessions_merge_and_a_gap_splits_them() -> None:
    events = [click("a", 0), click("a", 3), click("a", 6.001)]  # 0 and 3 touch (gap 3s); 6.001 is past 6
    source = TestSource().add_batch(events[2:]).add_batch(events[:2]).end()
    stream = source.stream(time_column="ts").with_watermark("ts", delay="10s")
    sessions = stream.key_by("user").window(rs.Session("3s")).agg(n=rs.count())
    rows = sessions.to_pandas(ONE).sort_values("window_start")
    assert rows["n"].tolist() == [2, 1]
    assert rows["window_end"].tolist() == [pd.Timestamp(at(6)), pd.Timestamp(at(9.001))]


def test_window_bounds_for_int64_millisecond_times() -> None:
    frame = pd.DataFrame({"k": ["x", "x", "y"], "t": [1_000, 61_000, 59_999]})
    result = rs.from_pandas(frame, time_column="t").key_by("k").window(rs.Tumbling("1m")).agg(n=rs.count())
    rows = result.to_pandas(ONE).sort_values(["k", "window_start"])
    assert rows.to_dict("records") == [
        {"k": "x", "window_start": 0, "window_end": 60_000, "n": 1},
        {"k": "x", "window_start": 60_000, "window_end": 120_000, "n": 1},
        {"k": "y", "window_start": 0, "window_end": 60_000, "n": 1},
    ]


def test_windows_need_an_event_time() -> None:
    with pytest.raises(rs.PlanError, match="the stream has no event time"):
        rs.from_pandas(pd.DataFrame({"k": [1]})).key_by("k").window(rs.Tumbling("1m"))
    with pytest.raises(rs.PlanError, match="Sliding slide .* must not exceed size"):
        rs.Sliding("1s", "2s")
    with pytest.raises(rs.PlanError, match="'ten seconds' is not a duration"):
        rs.Tumbling("ten seconds")
