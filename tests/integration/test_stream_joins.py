"""Two streams joined in event time (interval joins), against DuckDB, at any parallelism and batch size."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from job_process import kill_at_random_checkpoints, run_job_process

import raystream as rs
from raystream.testing import ListSink, TestSource

pytestmark = pytest.mark.usefixtures("ray_local")

HERE = Path(__file__).resolve().parent
JOB = HERE / "stream_join_job.py"
PROPERTY = settings(max_examples=6, deadline=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck))
T0 = 1_767_225_600_000  # 2026-01-01, in epoch ms
#: Rows come out of order by less than this; with_watermark waits longer, so no row is late.
DISORDER_MS = 2_000
HOWS = ("inner", "left", "right", "outer")
SQL_JOIN = {"inner": "join", "left": "left join", "right": "right join", "outer": "full join"}
COLUMNS = ["k", "t", "v", "t_right", "v_right"]


def sorted_frame(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Rows in one order, nulls as None, so that two answers compare whatever order they came in."""
    frame = frame[columns].astype(object).where(frame[columns].notna(), None)
    return frame.sort_values(columns, key=lambda c: c.astype(str)).reset_index(drop=True)


def as_ms(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    for column in columns:
        if pd.api.types.is_datetime64_any_dtype(frame[column]):
            frame[column] = frame[column].astype("datetime64[ms]").astype("Int64")
    return frame


@st.composite
def events(draw: st.DrawFn, rows: int) -> pd.DataFrame:
    """Rows of keys 0..4 (some null), in time order give or take DISORDER_MS."""
    gaps = draw(st.lists(st.integers(0, 700), min_size=rows, max_size=rows))
    jitter = draw(st.lists(st.integers(0, DISORDER_MS - 1), min_size=rows, max_size=rows))
    keys = draw(st.lists(st.one_of(st.none(), st.integers(0, 4)), min_size=rows, max_size=rows))
    return pd.DataFrame(
        {
            "k": pd.array(keys, dtype="Int64"),
            "t": T0 + np.cumsum(gaps).astype(np.int64) + np.array(jitter, dtype=np.int64),
            "v": np.arange(rows, dtype=np.int64),
        }
    )


def expected(left: pd.DataFrame, right: pd.DataFrame, how: str, lower_ms: int, upper_ms: int) -> pd.DataFrame:
    con = duckdb.connect()
    con.register("l", left)
    con.register("r", right)
    return con.sql(
        "select coalesce(l.k, r.k) as k, coalesce(l.t, r.t) as t, l.v, r.t as t_right, r.v as v_right "
        f"from l {SQL_JOIN[how]} r on l.k = r.k and r.t between l.t + {lower_ms} and l.t + {upper_ms}"
    ).df()


def timed(frame: pd.DataFrame) -> rs.Stream:
    return rs.from_pandas(frame).with_watermark("t", delay=f"{DISORDER_MS + 1}ms")


#: Bounds as the API takes them, and in milliseconds for DuckDB: negative, zero and asymmetric.
BOUNDS = st.sampled_from(
    [
        (("-2s", "2s"), -2_000, 2_000),
        (("0s", "0s"), 0, 0),
        (("-5s", "-1s"), -5_000, -1_000),
        (("1500ms", "4s"), 1_500, 4_000),
    ]
)


@pytest.mark.parametrize("how", HOWS)
@settings(PROPERTY, max_examples=2)
@given(
    data=st.data(),
    batch=st.sampled_from([1, 7, 1_000, 100_000]),
    parallelism=st.integers(1, 4),
    bounds=BOUNDS,
)
def test_an_interval_join_equals_duckdb_at_any_parallelism_and_batch_size(
    how: str, data: st.DataObject, batch: int, parallelism: int, bounds: tuple[tuple[str, str], int, int]
) -> None:
    between, lower, upper = bounds
    most = 30 if batch == 1 else 300
    left = data.draw(events(data.draw(st.integers(0, most))))
    right = data.draw(events(data.draw(st.integers(0, most))))
    joined = timed(left).join(timed(right), on="k", between=between, how=how)  # type: ignore[arg-type]
    job = joined.start(rs.RunConfig(parallelism=parallelism, max_batch_rows=batch)).wait(120)
    assert job.metrics()["late_rows"] == 0
    got = as_ms(job.results(), "t", "t_right")
    assert list(got.columns) == COLUMNS
    want = expected(left, right, how, lower, upper)
    pd.testing.assert_frame_equal(sorted_frame(got, COLUMNS), sorted_frame(want, COLUMNS), check_dtype=False)


def expected_window_join(left: pd.DataFrame, right: pd.DataFrame, how: str, size: int, slide: int) -> pd.DataFrame:
    """Each row in each window it belongs to, joined on the key and the window, in SQL."""
    con = duckdb.connect()
    con.register("l", left)
    con.register("r", right)
    windows = f"unnest(generate_series(t // {slide} * {slide} - {size} + {slide}, t // {slide} * {slide}, {slide}))"
    return con.sql(
        f"with lw as (select *, ws from l, {windows} w(ws)), rw as (select *, ws from r, {windows} w(ws)) "
        "select coalesce(l.k, r.k) as k, coalesce(l.t, r.t) as t, l.v, r.t as t_right, r.v as v_right, "
        f"coalesce(l.ws, r.ws) as window_start, coalesce(l.ws, r.ws) + {size} as window_end "
        f"from lw l {SQL_JOIN[how]} rw r on l.k = r.k and l.ws = r.ws"
    ).df()


WINDOWS = st.sampled_from([(rs.Tumbling("2s"), 2_000, 2_000), (rs.Sliding("3s", "1s"), 3_000, 1_000)])


@pytest.mark.parametrize("how", HOWS)
@settings(PROPERTY, max_examples=2)
@given(
    data=st.data(),
    batch=st.sampled_from([1, 7, 1_000, 100_000]),
    parallelism=st.integers(1, 4),
    window=WINDOWS,
)
def test_a_window_join_equals_duckdb_at_any_parallelism_and_batch_size(
    how: str, data: st.DataObject, batch: int, parallelism: int, window: tuple[rs.Window, int, int]
) -> None:
    kind, size, slide = window
    most = 30 if batch == 1 else 300
    left = data.draw(events(data.draw(st.integers(0, most))))
    right = data.draw(events(data.draw(st.integers(0, most))))
    joined = timed(left).join(timed(right), on="k", window=kind, how=how)  # type: ignore[arg-type]
    job = joined.start(rs.RunConfig(parallelism=parallelism, max_batch_rows=batch)).wait(120)
    assert job.metrics()["late_rows"] == 0
    columns = [*COLUMNS, "window_start", "window_end"]
    got = as_ms(job.results(), "t", "t_right", "window_start", "window_end")
    assert list(got.columns) == columns
    want = expected_window_join(left, right, how, size, slide)
    pd.testing.assert_frame_equal(sorted_frame(got, columns), sorted_frame(want, columns), check_dtype=False)


def test_a_window_join_emits_each_window_once_when_it_fires() -> None:
    left, right = TestSource(), TestSource()
    left.add_batch([{"k": 1, "t": T0 + 1_000}, {"k": 2, "t": T0 + 2_000}])
    right.add_batch([{"k": 1, "t": T0 + 4_000}, {"k": 3, "t": T0 + 4_500}])  # epoch 1: watermark 2 s
    left.add_batch([{"k": 1, "t": T0 + 6_000}])  # epoch 2: watermark 6 s, past the first window's end (5 s)
    right.add_batch([{"k": 1, "t": T0 + 7_000}])
    left.end()
    right.end()
    sink = ListSink()
    joined = left.stream(time_column="t").join(
        right.stream(time_column="t"), on="k", window=rs.Tumbling("5s"), how="outer"
    )
    joined.write(sink, rs.RunConfig(parallelism=2))
    first = [
        (row["k"], row["t_right"] is not None) for epoch, rows in sink.batches for row in rows.to_pylist() if epoch == 2
    ]
    assert sorted(first) == [(1, True), (2, False), (3, True)]  # the window [0 s, 5 s), once, in epoch 2
    assert len(sink.rows()) == 4  # and the window [5 s, 10 s) at the end


@pytest.mark.parametrize("how", ["inner", "outer"])
def test_a_regular_join_matches_rows_at_most_ttl_apart_as_sql_does(how: str) -> None:
    rng = np.random.default_rng(2)
    n = 400
    left = pd.DataFrame({"k": rng.integers(0, 8, n), "t": T0 + np.sort(rng.integers(0, 60_000, n)), "v": np.arange(n)})
    right = pd.DataFrame(
        {"k": rng.integers(0, 8, n), "t": T0 + np.sort(rng.integers(0, 60_000, n)), "v": -np.arange(n)}
    )
    joined = timed(left).join(timed(right), on="k", ttl="1500ms", how=how)  # type: ignore[arg-type]
    got = as_ms(joined.to_pandas(rs.RunConfig(parallelism=2, max_batch_rows=50)), "t", "t_right")
    want = expected(left, right, how, -1_500, 1_500)  # |l.t - r.t| <= ttl
    pd.testing.assert_frame_equal(sorted_frame(got, COLUMNS), sorted_frame(want, COLUMNS), check_dtype=False)


def expected_asof(left: pd.DataFrame, right: pd.DataFrame, how: str, tolerance_ms: int | None) -> pd.DataFrame:
    """DuckDB's ASOF join, then the tolerance: a right row too old matches nothing."""
    con = duckdb.connect()
    con.register("l", left)
    con.register("r", right)
    joined = con.sql(
        "select l.k, l.t, l.v, r.t as t_right, r.v as v_right from l asof left join r on l.k = r.k and l.t >= r.t"
    ).df()
    if tolerance_ms is not None:
        joined.loc[(joined.t - joined.t_right) > tolerance_ms, ["t_right", "v_right"]] = None
    return joined[joined.t_right.notna()] if how == "inner" else joined


@pytest.mark.parametrize("how", ["inner", "left"])
@settings(PROPERTY, max_examples=2)
@given(
    data=st.data(),
    batch=st.sampled_from([1, 7, 1_000, 100_000]),
    parallelism=st.integers(1, 4),
    tolerance=st.sampled_from([None, ("1s", 1_000), ("0s", 0)]),
)
def test_an_asof_join_equals_duckdb_at_any_parallelism_and_batch_size(
    how: str, data: st.DataObject, batch: int, parallelism: int, tolerance: tuple[str, int] | None
) -> None:
    most = 30 if batch == 1 else 300
    left = data.draw(events(data.draw(st.integers(0, most))))
    right = data.draw(events(data.draw(st.integers(0, most))))
    right = right.drop_duplicates(["k", "t"])  # SQL leaves ties open; raystream's rule for them is tested below
    joined = timed(left).join_asof(
        timed(right),
        by="k",
        tolerance=None if tolerance is None else tolerance[0],
        how=how,  # type: ignore[arg-type]
    )
    job = joined.start(rs.RunConfig(parallelism=parallelism, max_batch_rows=batch)).wait(120)
    assert job.metrics()["late_rows"] == 0
    got = as_ms(job.results(), "t", "t_right")
    assert list(got.columns) == COLUMNS
    want = expected_asof(left, right, how, None if tolerance is None else tolerance[1])
    pd.testing.assert_frame_equal(sorted_frame(got, COLUMNS), sorted_frame(want, COLUMNS), check_dtype=False)


def test_an_asof_join_takes_the_right_row_read_last_of_a_time_and_waits_for_the_watermark() -> None:
    trades, quotes = TestSource(), TestSource()
    trades.add_batch([{"symbol": "A", "t": T0 + 5_000, "qty": 1}])
    quotes.add_batch([{"symbol": "A", "t": T0 + 1_000, "price": 10.0}, {"symbol": "A", "t": T0 + 3_000, "price": 11.0}])
    quotes.add_batch([{"symbol": "A", "t": T0 + 3_000, "price": 12.0}])  # the same time, read later: it wins
    quotes.add_batch([{"symbol": "A", "t": T0 + 9_000, "price": 13.0}])  # the watermark passes the trade
    trades.add_batch([{"symbol": "A", "t": T0 + 9_500, "qty": 2}])
    trades.end()
    quotes.end()
    sink = ListSink()
    joined = trades.stream(time_column="t").join_asof(quotes.stream(time_column="t"), by="symbol", how="left")
    job = joined.write(sink, rs.RunConfig(parallelism=2), wait=False).wait(60)
    rows = [(row["qty"], row["price"]) for row in sink.rows()]
    assert rows == [(1, 12.0), (2, 13.0)]
    first_epoch = sink.batches[0][0]
    assert first_epoch >= 3  # the first trade waited until the quotes' watermark passed it
    assert job.metrics()["state_by_input"]["join_asof"]["right_rows"] <= 1


@pytest.mark.parametrize("how", ["inner", "left", "outer"])
def test_an_interval_to_a_column_holds_the_next_windows_watermark_back_and_equals_duckdb(how: str) -> None:
    rng = np.random.default_rng(4)
    n, m = 400, 5_000
    auctions = pd.DataFrame({"id": np.arange(n), "t": T0 + np.sort(rng.integers(0, 100_000, n))})
    auctions["expires"] = auctions["t"] + rng.integers(0, 20_000, n)  # open up to 20 s: longer than a window
    bids = pd.DataFrame({"auction": rng.integers(0, n, m), "t": T0 + np.sort(rng.integers(0, 120_000, m))})
    joined = rs.from_pandas(auctions, time_column="t").join(
        rs.from_pandas(bids, time_column="t"), left_on="id", right_on="auction", between=("t", "expires"), how=how
    )
    windows = joined.key_by("id").window(rs.Tumbling("10s")).agg(n=rs.count(), bids=rs.count("t_right"))
    job = windows.start(rs.RunConfig(parallelism=2, max_batch_rows=100)).wait(120)
    assert job.metrics()["late_rows"] == 0  # the join held the window's watermark back to its oldest auction
    got = as_ms(job.results(), "window_start")
    con = duckdb.connect()
    con.register("a", auctions)
    con.register("b", bids)
    want = con.sql(  # with left_on and right_on, a bid without an auction has no id, as in SQL
        "select a.id, coalesce(a.t, b.t) // 10000 * 10000 as window_start, "
        f"count(*) as n, count(b.t) as bids from a {SQL_JOIN[how]} b "
        "on a.id = b.auction and b.t between a.t and a.expires group by all"
    ).df()
    columns = ["id", "window_start", "n", "bids"]
    pd.testing.assert_frame_equal(sorted_frame(got, columns), sorted_frame(want, columns), check_dtype=False)


def test_left_on_and_right_on_keep_both_keys_and_a_right_only_row_has_no_left_key() -> None:
    left = pd.DataFrame({"user": [1, 2], "t": [T0, T0 + 1_000], "page": ["a", "b"]})
    right = pd.DataFrame({"uid": [1, 3], "ts": [T0 + 500, T0 + 900], "page": ["x", "y"]})
    joined = rs.from_pandas(left, time_column="t").join(
        rs.from_pandas(right, time_column="ts"), left_on="user", right_on="uid", between=("0s", "1s"), how="outer"
    )
    assert joined.columns == ["user", "t", "page", "uid", "ts", "page_right"]
    got = as_ms(joined.to_pandas(rs.RunConfig(parallelism=2)), "t", "ts")
    rows = sorted_frame(got, joined.columns).values.tolist()
    assert rows == [
        [1, T0, "a", 1, T0 + 500, "x"],
        [2, T0 + 1_000, "b", None, None, None],
        [None, T0 + 900, None, 3, T0 + 900, "y"],  # the time column holds the right row's time
    ]


def test_an_outer_join_emits_an_unmatched_row_once_the_watermark_passes_it_not_before() -> None:
    left, right = TestSource(), TestSource()
    left.add_batch([{"k": "lonely", "t": T0}, {"k": "a", "t": T0 + 2_500}])  # epoch 1: watermark 2.5 s
    right.add_batch([{"k": "alone", "t": T0}, {"k": "a", "t": T0 + 2_500}])
    left.add_batch([{"k": "b", "t": T0 + 3_500}])  # epoch 2: watermark 3.5 s, past both lonely rows' last chance
    right.add_batch([{"k": "b", "t": T0 + 3_600}])
    left.end()
    right.end()
    sink = ListSink()
    joined = left.stream(time_column="t").join(
        right.stream(time_column="t"), on="k", between=("-3s", "3s"), how="outer"
    )
    joined.write(sink, rs.RunConfig(parallelism=1))
    epoch_of = {row["k"]: epoch for epoch, rows in sink.batches for row in rows.to_pylist()}
    assert epoch_of["a"] < epoch_of["lonely"] == epoch_of["alone"] == epoch_of["b"]


def test_a_window_after_an_interval_join_equals_duckdb_and_sees_no_late_row() -> None:
    rng = np.random.default_rng(5)
    n = 3_000
    left = pd.DataFrame({"k": rng.integers(0, 10, n), "t": T0 + np.sort(rng.integers(0, 120_000, n)), "v": 1})
    right = pd.DataFrame({"k": rng.integers(0, 10, n), "t": T0 + np.sort(rng.integers(0, 120_000, n)), "v": 2})
    joined = rs.from_pandas(left, time_column="t").join(
        rs.from_pandas(right, time_column="t"), on="k", between=("-2s", "8s"), how="left"
    )
    windows = joined.key_by("k").window(rs.Tumbling("5s")).agg(n=rs.count(), matched=rs.count("t_right"))
    job = windows.start(rs.RunConfig(parallelism=2, max_batch_rows=200)).wait(120)
    assert job.metrics()["late_rows"] == 0  # the window's watermark lags the join's by the interval
    got = job.results()
    got["window_start"] = got["window_start"].astype("datetime64[ms]").astype("int64")
    joined_sql = expected(left, right, "left", -2_000, 8_000)  # noqa: F841 - read by DuckDB
    want = duckdb.sql(
        "select k, t // 5000 * 5000 as window_start, count(*) as n, count(t_right) as matched from joined_sql "
        "group by all"
    ).df()
    columns = ["k", "window_start", "n", "matched"]
    pd.testing.assert_frame_equal(
        sorted_frame(got.astype({c: "int64" for c in columns}), columns),
        sorted_frame(want.astype({c: "int64" for c in columns}), columns),
    )


def late_script() -> tuple[TestSource, TestSource]:
    """Two streams where one right row, at 1 s, comes behind the 10 s watermark."""
    left, right = TestSource(), TestSource()
    left.add_batch([{"k": 1, "t": T0 + 10_000}])
    right.add_batch([{"k": 1, "t": T0 + 10_000}])
    left.add_batch([{"k": 1, "t": T0 + 20_000}])
    right.add_batch([{"k": 1, "t": T0 + 20_000}, {"k": 1, "t": T0 + 1_000}])
    left.end()
    right.end()
    return left, right


@pytest.mark.parametrize("kind", ["interval", "window", "asof"])
def test_a_row_behind_its_inputs_watermark_is_late_counted_delivered_with_late_side_and_matches_nothing(
    kind: str,
) -> None:
    left, right = late_script()
    streams = left.stream(time_column="t"), right.stream(time_column="t")
    joined = {
        "interval": lambda: streams[0].join(streams[1], on="k", between=("-10s", "0s"), late="side"),
        "window": lambda: streams[0].join(streams[1], on="k", window=rs.Tumbling("5s"), late="side"),
        "asof": lambda: streams[0].join_asof(streams[1], by="k", late="side"),
    }[kind]()
    job = joined.start(rs.RunConfig(parallelism=2)).wait(60)
    assert job.metrics()["late_rows"] == 1
    late = as_ms(job.late_events(), "t", "t_right")
    assert late[["k", "t", "t_right"]].values.tolist() == [[1, T0 + 1_000, T0 + 1_000]]  # a right-only row
    expected_rows = {"interval": 3, "window": 2, "asof": 2}[kind]  # the late row matched nothing
    assert len(job.results()) == expected_rows
    late_only = joined.late_events().to_pandas(rs.RunConfig(parallelism=1))
    assert len(late_only) == 1


def test_the_state_of_an_interval_join_stays_within_what_the_interval_implies() -> None:
    n, batch = 60_000, 1_000  # 100 rows per second per side, over 10 minutes, 10 s per batch
    frame = pd.DataFrame({"k": np.arange(n) % 50, "t": T0 + np.arange(n, dtype=np.int64) * 10, "v": np.arange(n)})
    sides = [TestSource(), TestSource()]
    for source in sides:
        for first in range(0, n, batch):
            source.add_batch(frame.iloc[first : first + batch])
        source.end()
    left, right = (source.stream(time_column="t") for source in sides)
    joined = left.join(right, on="k", between=("-1s", "1s"), name="pairs")
    job = joined.start(rs.RunConfig(parallelism=2)).wait(300)
    assert len(job.results()) == len(expected(frame, frame, "inner", -1_000, 1_000))
    # Each side holds the 1 s of rows a later row could still meet, and the epoch's batch it just read.
    assert job.metrics()["peak_state_rows"]["pairs"] <= 2 * (100 + 2 * batch)
    assert job.metrics()["state_by_input"]["pairs"] == {"left_rows": 0, "right_rows": 0, "oldest_time_ms": None}


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda s: s.join(s, on="k", between=("2s", "1s")), "lower bound after its upper bound"),
        (lambda s: s.join(rs.from_pandas(pd.DataFrame({"k": [1]})), on="k", between=("0s", "1s")), "no event time"),
        (lambda s: s.join(s, on="k", between=("0s", "soon")), "is not a duration"),
        (lambda s: s.join(s, on="k", between=("1s",)), r"between= is \(lower, upper\)"),
        (lambda s: s.join(s, on="nope", between=("0s", "1s")), "'nope'"),
        (lambda s: s.join(s, on="k", between=("0s", "1s"), how="sideways"), "how must be"),
        (lambda s: s.join(s, on="k", how="outer"), "with a table, how must be 'inner' or 'left'"),
        (lambda s: s.join(s, on="k", between=("0s", "1s"), ttl="1s"), "not several"),
        (lambda s: s.join(s, on="k", window=rs.Session("1s")), "session windows do not join"),
        (
            lambda s: s.with_columns(window_start=pc.field("t")).join(s, on="k", window=rs.Tumbling("1s")),
            "adds the column 'window_start'",
        ),
        (lambda s: s.join(s, on="k", ttl="a while"), "is not a duration"),
        (
            lambda s: s.with_columns(u=pc.field("t")).join(s, on="k", between=("u", "1s")),
            "a lower bound that is a column must be the stream's time column",
        ),
        (
            lambda s: s.with_columns(u=pc.field("k") > 0).join(s, on="k", between=("t", "u")),
            "must hold times",
        ),
        (lambda s: s.join_asof(rs.from_pandas(pd.DataFrame({"k": [1]})), by="k"), "join_asof: the right"),
        (lambda s: s.join_asof(s, by="k", how="outer"), "join_asof: how must be 'inner' or 'left'"),
        (lambda s: s.join_asof(s), "give the key columns"),
    ],
)
def test_bad_interval_joins_are_plan_errors_that_say_what_to_do(build: object, message: str) -> None:
    stream = rs.from_pandas(pd.DataFrame({"k": [1], "t": [T0]}), time_column="t")
    with pytest.raises(rs.PlanError, match=message):
        build(stream)  # type: ignore[operator]


def test_two_unbounded_streams_need_an_interval_or_a_ttl_and_a_regular_outer_join_is_refused() -> None:
    def unbounded() -> rs.Stream:
        return TestSource().add_batch([{"k": 1, "t": T0}]).stream(time_column="t")

    with pytest.raises(rs.PlanError, match=r"a window join \(window=\) or a regular join \(ttl=\)"):
        unbounded().join(unbounded(), on="k")
    with pytest.raises(rs.PlanError, match="could never emit its rows without a match; use how='inner'"):
        unbounded().join(unbounded(), on="k", ttl="1h", how="left")
    assert unbounded().join(unbounded(), on="k", ttl="1h").columns == ["k", "t", "t_right"]


# -- an interval join job killed and restored ------------------------------------------------------


@pytest.fixture(scope="module")
def join_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    rng = np.random.default_rng(8)
    folder = tmp_path_factory.mktemp("stream_join")
    for name, count in (("views", 12_000), ("clicks", 6_000)):
        times = T0 + np.sort(rng.integers(0, 120_000, count))
        frame = pd.DataFrame({"ad": rng.integers(0, 30, count), "t": times, "v": np.arange(count)})
        frame["until"] = frame["t"] + (frame["v"] % 9) * 1_000  # each view counts clicks for 0 to 8 s
        (folder / name).mkdir()
        for part in range(2):
            chunk = frame.iloc[part * count // 2 : (part + 1) * count // 2]
            pq.write_table(pa.Table.from_pandas(chunk, preserve_index=False), folder / name / f"part-{part}.parquet")
    return {"views": folder / "views", "clicks": folder / "clicks"}


def expected_job_output(inputs: dict[str, Path]) -> pd.DataFrame:
    views, clicks = (f"{inputs[name]}/*.parquet" for name in ("views", "clicks"))
    return duckdb.sql(
        "select ad, t // 10000 * 10000 as window_start, count(*) as n, count(t_right) as clicks from ("
        "select coalesce(l.ad, r.ad) as ad, coalesce(l.t, r.t) as t, r.t as t_right "
        f"from '{views}' l full join '{clicks}' r on l.ad = r.ad and r.t between l.t and l.until"
        ") group by all"
    ).df()


def assert_job_output(out: Path, inputs: dict[str, Path]) -> None:
    columns = ["ad", "window_start", "n", "clicks"]
    got = pq.read_table(out).to_pandas()
    pd.testing.assert_frame_equal(
        sorted_frame(got, columns), sorted_frame(expected_job_output(inputs), columns), check_dtype=False
    )


@pytest.mark.slow
def test_an_interval_join_job_killed_three_times_gives_its_output_exactly(
    join_inputs: dict[str, Path], tmp_path: Path
) -> None:
    args = [str(join_inputs["views"]), str(join_inputs["clicks"]), str(tmp_path / "out"), str(tmp_path / "ck")]
    checkpoints = tmp_path / "ck"
    kill_at_random_checkpoints(JOB, [*args, "--delay", "0.1"], checkpoints, seed=5)
    assert run_job_process(JOB, args)
    assert_job_output(tmp_path / "out", join_inputs)


def test_restoring_an_interval_join_at_another_parallelism_gives_the_same_output(
    join_inputs: dict[str, Path], tmp_path: Path
) -> None:
    sys.path.insert(0, str(HERE))
    from stream_join_job import build

    checkpoints = str(tmp_path / "ck")
    for parallelism, stop_early in ((3, True), (1, False)):
        config = rs.RunConfig(
            parallelism=parallelism, max_batch_rows=1_000, checkpoint_dir=checkpoints, checkpoint_every=1
        )
        job = build(str(join_inputs["views"]), str(join_inputs["clicks"]), 0.0).write_parquet(
            str(tmp_path / "out"), config, wait=False
        )
        if stop_early:
            deadline = time.monotonic() + 60
            while job.metrics()["rows_read"] < 8_000:
                assert time.monotonic() < deadline and job.status() == "running", job.metrics()
                time.sleep(0.02)
            job.stop()
            assert job.status() == "stopped"
        else:
            job.wait(120)
    assert_job_output(tmp_path / "out", join_inputs)
