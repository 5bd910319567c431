"""Acceptance: tumbling, sliding and session windows over out-of-order events equal DuckDB.

The disorder stays within the watermark delay, so no event is late, and the
answer must not depend on the parallelism or on how the stream is batched.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from windows_oracle import normalized, out_of_order_events, windows_sql

import raystream as rs

pytestmark = pytest.mark.usefixtures("ray_local")

# Each event is displaced by up to 2 s, so two events are at most 4 s out of order: within the 5 s delay.
EVENTS = out_of_order_events(120_000, keys=25, max_disorder_ms=2_000, seed=42)
WINDOWS = {
    "tumbling": rs.Tumbling("10s"),
    "sliding": rs.Sliding("10s", "2500ms"),
    "sliding, slide not dividing size": rs.Sliding("10s", "3s"),
    "session": rs.Session("45ms"),
}
TIME_TYPES = {
    "tumbling": pa.timestamp("ms", tz="UTC"),
    "sliding": pa.int64(),
    "sliding, slide not dividing size": pa.timestamp("ns"),
    "session": pa.timestamp("us"),
}


def windowed(events: pd.DataFrame, name: str, config: rs.RunConfig) -> pd.DataFrame:
    table = pa.Table.from_pandas(events, preserve_index=False)
    time_type = TIME_TYPES[name]
    if time_type != pa.int64():
        table = table.set_column(0, "t", table.column("t").cast(pa.timestamp("ms", tz="UTC")).cast(time_type))
    stream = rs.from_arrow(table).with_watermark("t", delay="5s").key_by("k").window(WINDOWS[name])
    result = stream.agg(n=rs.count(), s=rs.sum("v"), m=rs.max("v")).to_arrow(config)
    # Window bounds keep the time column's type: int64 ms, or the timestamp's unit and zone.
    assert result.schema.field("window_start").type == time_type == result.schema.field("window_end").type
    return result.to_pandas()


@pytest.fixture(scope="module")
def oracle() -> dict[str, pd.DataFrame]:
    return {name: normalized(windows_sql(EVENTS, window)) for name, window in WINDOWS.items()}


@pytest.mark.parametrize("name", list(WINDOWS))
@pytest.mark.parametrize("parallelism", [1, 2, 4])
def test_windows_equal_duckdb_at_any_parallelism(oracle: dict[str, pd.DataFrame], name: str, parallelism: int) -> None:
    result = windowed(EVENTS, name, rs.RunConfig(parallelism=parallelism, max_batch_rows=20_000))
    pd.testing.assert_frame_equal(normalized(result), oracle[name])


@pytest.mark.parametrize("name", list(WINDOWS))
@pytest.mark.parametrize("max_batch_rows", [1_000, 1_000_000])
def test_windows_equal_duckdb_at_any_batch_size(
    oracle: dict[str, pd.DataFrame], name: str, max_batch_rows: int
) -> None:
    result = windowed(EVENTS, name, rs.RunConfig(parallelism=2, max_batch_rows=max_batch_rows))
    pd.testing.assert_frame_equal(normalized(result), oracle[name])


def test_the_events_really_are_out_of_order() -> None:
    backwards = np.diff(EVENTS["t"].to_numpy()) < 0
    assert backwards.mean() > 0.3


# Each example runs a real job, so shrinking a failure would take many minutes: report it unshrunk.
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
@given(
    name=st.sampled_from(list(WINDOWS)),
    count=st.integers(1, 3000),
    keys=st.integers(1, 6),
    seed=st.integers(0, 2**31),
    max_batch_rows=st.integers(1, 5000),
    parallelism=st.integers(1, 4),
)
def test_random_events_batches_and_parallelism_give_the_same_windows(
    name: str, count: int, keys: int, seed: int, max_batch_rows: int, parallelism: int
) -> None:
    events = out_of_order_events(count, keys=keys, max_disorder_ms=2_000, seed=seed)
    # Random batch cuts: the batch size varies, and so does the order of rows within the disorder bound.
    result = windowed(events, name, rs.RunConfig(parallelism=parallelism, max_batch_rows=max_batch_rows))
    pd.testing.assert_frame_equal(normalized(result), normalized(windows_sql(events, WINDOWS[name])))


@pytest.mark.parametrize("parallelism, max_batch_rows", [(1, 700), (3, 4_000)])
def test_every_aggregate_over_sliding_windows_equals_duckdb(parallelism: int, max_batch_rows: int) -> None:
    """Sliding windows aggregate per pane, then merge panes into windows: every aggregate, nulls included."""
    events = out_of_order_events(20_000, keys=7, max_disorder_ms=2_000, seed=7)
    events["v"] = events["v"].where(events["v"] % 5 != 0).astype("Int64") % 40  # nulls, and repeated values
    size, slide = 10_000, 3_000
    stream = rs.from_pandas(events).with_watermark("t", delay="5s").key_by("k").window(rs.Sliding(size, slide))
    aggregates = dict(n=rs.count(), c=rs.count("v"), s=rs.sum("v"), lo=rs.min("v"), hi=rs.max("v"), avg=rs.mean("v"))
    result = stream.agg(**aggregates, d=rs.count_distinct("v")).to_pandas(
        rs.RunConfig(parallelism=parallelism, max_batch_rows=max_batch_rows)
    )
    expected = duckdb.sql(
        f"""
        with assigned as (
            select k, v, (t // {slide}) * {slide} - j * {slide} as window_start, t
            from events, range(0, {-(-size // slide)}) as r(j))
        select k, window_start, count(*) as n, count(v) as c, sum(v) as s, min(v) as lo, max(v) as hi,
               avg(v) as avg, count(distinct v) as d
        from assigned where window_start + {size} > t group by k, window_start
        """
    ).df()
    columns = ["k", "window_start", "n", "c", "s", "lo", "hi", "avg", "d"]
    ours, theirs = (f[columns].sort_values(["k", "window_start"]).reset_index(drop=True) for f in (result, expected))
    pd.testing.assert_frame_equal(ours, theirs, check_dtype=False)
