"""The watermark tracker's signals: splits that never produce, a split holding the watermark, leaps in time."""

from __future__ import annotations

import logging

import pytest

from raystream._time import START_OF_TIME_MS
from raystream.runtime.planner import EventTime
from raystream.runtime.watermarks import EVENT_TIME_LEAP_MS, WatermarkTracker


def progress(max_event_time_ms: int | None, rows: int = 1) -> dict[str, object]:
    return {"max_event_time_ms": max_event_time_ms, "rows": rows, "done": False}


def test_a_split_polled_without_an_event_stops_holding_the_watermark_after_the_timeout() -> None:
    tracker = WatermarkTracker(EventTime("t", delay_ms=0), new_split_idle_timeout_ms=1_000)
    for split in ("p0", "p1", "p2", "queued"):
        tracker.add_split(split, now=0.0, min_event_time_ms=None if split != "queued" else 1_000)
    tracker.observe("p0", progress(5_000), now=0.0)
    tracker.observe("p1", progress(7_000), now=0.0)
    tracker.observe("p2", progress(None, rows=0), now=0.0)
    assert tracker.advance(now=0.5) == START_OF_TIME_MS  # p2 may still produce
    # p2 never did: it no longer counts. "queued" waits behind another split: never polled, it holds at its start.
    assert tracker.advance(now=1.0) == 1_000
    assert tracker.advance(now=100.0) == 1_000
    tracker.observe("queued", {"max_event_time_ms": None, "rows": 0, "done": True}, now=1.5)
    tracker.observe("p2", progress(6_000), now=1.5)  # once it produces, it counts again
    tracker.observe("p0", progress(9_000), now=1.5)
    assert tracker.advance(now=1.5) == 6_000


def test_a_split_that_produced_is_not_idle_by_the_new_split_timeout() -> None:
    tracker = WatermarkTracker(EventTime("t"), new_split_idle_timeout_ms=1_000)
    tracker.add_split("p0", now=0.0)
    tracker.add_split("p1", now=0.0)
    tracker.observe("p0", progress(5_000), now=0.1)
    tracker.observe("p1", progress(3_000), now=0.1)
    tracker.observe("p0", progress(8_000), now=10.0)
    assert tracker.advance(now=10.0) == 3_000  # p1 is silent, but has produced: only idle_timeout frees it


def test_the_split_holding_the_watermark_back_is_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    tracker = WatermarkTracker(EventTime("t"))
    tracker.add_split("busy", now=0.0)
    tracker.add_split("empty", now=0.0)
    tracker.observe("busy", progress(5_000), now=0.0)
    tracker.advance(now=0.0)
    assert tracker.held_by == "empty"
    assert tracker.stalled(now=30.0, after_s=60.0) == []
    assert tracker.stalled(now=61.0, after_s=60.0) == [("empty", 61.0, None)]
    assert tracker.stalled(now=120.0, after_s=60.0) == []  # once per stall
    assert tracker.split_watermark("busy") == 5_000 and tracker.split_watermark("empty") is None


def test_a_leap_far_past_every_other_event_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    tracker = WatermarkTracker(EventTime("t"))
    tracker.add_split("a", now=0.0)
    tracker.add_split("b", now=0.0)
    with caplog.at_level(logging.WARNING, logger="raystream"):
        tracker.observe("a", progress(1_000), now=0.0)
        tracker.observe("b", progress(2_000 + EVENT_TIME_LEAP_MS // 2), now=0.0)
        assert caplog.text == ""
        tracker.observe("b", progress(253_402_300_799_000), now=0.0)  # 9999-12-31
    assert "split 'b': event time leapt to 9999-12-31" in caplog.text
    assert "filter before with_watermark()" in caplog.text
