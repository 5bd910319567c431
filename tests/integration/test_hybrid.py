"""The history-to-live hand-over: rs.hybrid reads each event once, whatever the overlap, with state carried across."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from windows_oracle import normalized, out_of_order_events, windows_sql

import raystream as rs
from raystream.errors import PlanError

pytestmark = pytest.mark.usefixtures("ray_local")

EVENTS = out_of_order_events(40_000, keys=10, max_disorder_ms=2_000, seed=21)
SWITCH_MS = int(EVENTS["t"].min()) + 200_000
WINDOW = rs.Tumbling("10s")


def at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def hybrid_windows(history: pd.DataFrame, live: pd.DataFrame, switch_ms: int, config: rs.RunConfig) -> pd.DataFrame:
    stream = rs.hybrid(rs.from_pandas(history, time_column="t"), rs.from_pandas(live, time_column="t"), at(switch_ms))
    windows = stream.with_watermark("t", delay="5s").key_by("k").window(WINDOW)
    return windows.agg(n=rs.count(), s=rs.sum("v"), m=rs.max("v")).to_pandas(config)


@pytest.fixture(scope="module")
def oracle() -> pd.DataFrame:
    return normalized(windows_sql(EVENTS, WINDOW))


@settings(max_examples=6, deadline=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck))
@given(
    overlap_ms=st.integers(0, 150_000),
    parallelism=st.integers(1, 3),
    max_batch_rows=st.sampled_from([700, 5_000, 100_000]),
)
def test_overlapping_history_and_live_give_every_window_once(
    oracle: pd.DataFrame, overlap_ms: int, parallelism: int, max_batch_rows: int
) -> None:
    """Both sources hold the events around the switch; the windows still equal DuckDB over the events, once each."""
    history = EVENTS[EVENTS["t"] < SWITCH_MS + overlap_ms]
    live = EVENTS[EVENTS["t"] >= SWITCH_MS - overlap_ms]
    config = rs.RunConfig(parallelism=parallelism, max_batch_rows=max_batch_rows)
    pd.testing.assert_frame_equal(normalized(hybrid_windows(history, live, SWITCH_MS, config)), oracle)


def test_live_is_read_only_after_the_history() -> None:
    """No live row reaches the job before the last history row: the live source waits for its phase."""
    history = EVENTS[EVENTS["t"] < SWITCH_MS].assign(side="history")
    live = EVENTS[EVENTS["t"] >= SWITCH_MS].assign(side="live")
    stream = rs.hybrid(rs.from_pandas(history, time_column="t"), rs.from_pandas(live, time_column="t"), at(SWITCH_MS))
    seen: list[tuple[int, list[str]]] = []
    stream.foreach_batch(
        lambda batch, epoch: seen.append((epoch, sorted(set(batch.column("side").to_pylist())))),
        rs.RunConfig(parallelism=2, max_batch_rows=3_000),
    )
    sides = [side for _, sides in sorted(seen) for side in sides]
    assert sides == sorted(sides) and sides[0] == "history" and sides[-1] == "live"
    assert sum(1 for _, sides in seen if sides == ["history", "live"]) == 0


def test_hybrid_refuses_what_it_cannot_hand_over() -> None:
    frame = EVENTS.head(10)
    history, live = rs.from_pandas(frame, time_column="t"), rs.from_pandas(frame, time_column="t")
    with pytest.raises(PlanError, match="history must be a source stream"):
        rs.hybrid(history.filter(lambda t: t["k"] > 1), live, at(SWITCH_MS))
    with pytest.raises(PlanError, match="needs a time_column"):
        rs.hybrid(rs.from_pandas(frame), live, at(SWITCH_MS))
    with pytest.raises(PlanError, match="the time columns differ"):
        rs.hybrid(history, rs.from_pandas(frame.rename(columns={"t": "u"}), time_column="u"), at(SWITCH_MS))
    # A column only one side has is left out: a job that uses it fails at plan time, naming it.
    with pytest.raises(PlanError, match="unknown column 'v'"):
        rs.hybrid(history, rs.from_pandas(frame.drop(columns="v"), time_column="t"), at(SWITCH_MS)).select("v")
    with pytest.raises(PlanError, match="not a time"):
        rs.hybrid(history, live, "yesterday")


def test_switch_at_takes_an_iso_string() -> None:
    stream: Any = rs.hybrid(
        rs.from_pandas(EVENTS.head(10), time_column="t"),
        rs.from_pandas(EVENTS.head(10), time_column="t"),
        "2026-01-01T00:00:05+00:00",
    )
    assert stream.node.source.switch_at_ms == 1_767_225_605_000
