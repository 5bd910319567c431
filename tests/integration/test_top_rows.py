"""Acceptance: top rows and per-window stages equal DuckDB, ties included, at any batching and parallelism.

The shapes are Nexmark's: q5 (per sliding window, the keys with the most
events: a window, then a per-window ``top``), q7 (per window, the rows with
the highest value: ``window(...).top``), and a running ``top`` per key. The
events are out of order within the watermark delay, so none is late, and the
values are few, so that ties are common. Their state is checkpointed and
restored at another parallelism without changing the output.
"""

from __future__ import annotations

import time
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from windows_oracle import normalized as windows_normalized
from windows_oracle import out_of_order_events, windows_sql

import raystream as rs
from raystream.testing import ListSink, TestSource

pytestmark = pytest.mark.usefixtures("ray_local")

SIZE, SLIDE = rs.Sliding("2s", "500ms").size_ms, rs.Sliding("2s", "500ms").slide_ms


def events(count: int, keys: int, values: int, seed: int) -> pd.DataFrame:
    """Events 10 ms apart on average, out of order by up to 4 s, with ``values`` distinct values ``v``."""
    frame = out_of_order_events(count, keys=keys, max_disorder_ms=2_000, seed=seed)
    return frame.assign(v=frame["v"] % values)


EVENTS = events(20_000, keys=25, values=7, seed=5)


def sql(frame: pd.DataFrame, query: str) -> pd.DataFrame:
    con = duckdb.connect()
    con.register("events", frame)
    return con.sql(query).df()


def assigned(size: int, slide: int) -> str:
    """Each event once per sliding window that holds it, with its window_start (as windows_oracle does)."""
    return f"""
        select t, k, v, window_start from (
            select t, k, v, (t // {slide}) * {slide} - j * {slide} as window_start
            from events, range(0, {-(-size // slide)}) as r(j))
        where window_start + {size} > t"""


def hot_keys_sql(frame: pd.DataFrame, n: int = 1) -> pd.DataFrame:
    """q5: per sliding window, the keys whose count ranks within the first n (RANK, ties included)."""
    return sql(
        frame,
        f"""
        with counts as (select k, window_start, count(*) as n from ({assigned(SIZE, SLIDE)}) group by k, window_start)
        select k, window_start, window_start + {SIZE} as window_end, n from counts
        qualify rank() over (partition by window_start order by n desc) <= {n}""",
    )


def window_top_sql(frame: pd.DataFrame, n: int, ties: bool) -> pd.DataFrame:
    """q7-like: per key and sliding window, the rows whose v ranks within the first n (ties broken by t without)."""
    rank = "rank() over (partition by k, window_start order by v desc)"
    if not ties:
        rank = "row_number() over (partition by k, window_start order by v desc, t asc)"
    return sql(
        frame,
        f"""
        select t, k, v, window_start, window_start + {SIZE} as window_end from ({assigned(SIZE, SLIDE)})
        qualify {rank} <= {n}""",
    )


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows in a canonical order, every column as int64 (times as epoch ms)."""
    frame = frame.copy()
    for name in frame.columns:
        if pd.api.types.is_datetime64_any_dtype(frame[name]):
            frame[name] = pa.array(frame[name]).cast(pa.timestamp("ms", tz="UTC")).cast(pa.int64()).to_numpy()
    columns = sorted(frame.columns)
    return frame[columns].astype("int64").sort_values(columns).reset_index(drop=True)


def counts(frame: pd.DataFrame) -> rs.Stream:
    return rs.from_pandas(frame).with_watermark("t", delay="5s").key_by("k").window(rs.Sliding("2s", "500ms"))


def hot_keys(frame: pd.DataFrame, config: rs.RunConfig, n: int = 1) -> pd.DataFrame:
    windows = counts(frame).agg(n=rs.count())
    return windows.key_by("window_start", "window_end").top("n", n).to_pandas(config)


@pytest.fixture(scope="module")
def hot_keys_oracle() -> pd.DataFrame:
    expected = hot_keys_sql(EVENTS)
    assert (expected.groupby("window_start").size() > 1).mean() > 0.2  # ties are common: a quarter of the windows
    return comparable(expected)


# -- per window: q5 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("parallelism", "max_batch_rows"), [(1, 1_000_000), (2, 700), (3, 700), (3, 1_000_000)])
def test_hot_keys_per_window_equal_duckdb(hot_keys_oracle: pd.DataFrame, parallelism: int, max_batch_rows: int) -> None:
    result = hot_keys(EVENTS, rs.RunConfig(parallelism=parallelism, max_batch_rows=max_batch_rows))
    pd.testing.assert_frame_equal(comparable(result), hot_keys_oracle)


def test_the_top_three_counts_per_window_equal_duckdb() -> None:
    result = hot_keys(EVENTS, rs.RunConfig(parallelism=2, max_batch_rows=3_000), n=3)
    pd.testing.assert_frame_equal(comparable(result), comparable(hot_keys_sql(EVENTS, n=3)))


def test_each_window_is_ranked_in_the_epoch_it_fires_and_nothing_is_late() -> None:
    config = rs.RunConfig(parallelism=2, max_batch_rows=1_000)
    windows = counts(EVENTS).agg(n=rs.count())
    fired, ranked = ListSink(), ListSink()
    windows.write(fired, config)
    job = windows.key_by("window_end").top("n").write(ranked, config)

    def epoch_of_window(sink: ListSink) -> dict[int, set[int]]:
        epochs: dict[int, set[int]] = {}
        for epoch, table in sink.batches:
            for end in table.column("window_end").to_pylist():
                epochs.setdefault(end, set()).add(epoch)
        return epochs

    assert len(set(ranked.epochs())) > 5
    assert epoch_of_window(ranked) == epoch_of_window(fired)  # the same epoch, and only one, for each window
    assert all(len(epochs) == 1 for epochs in epoch_of_window(ranked).values())
    metrics = job.metrics()
    assert metrics["late_rows"] == 0
    assert metrics["peak_state_rows"]["top"] == 0  # no window was ever held from one epoch to the next


def test_per_window_aggregates_equal_duckdb() -> None:
    windows = counts(EVENTS).agg(n=rs.count())
    result = windows.key_by("window_end").agg(most=rs.max("n"), keys=rs.count(), total=rs.sum("n"))
    expected = sql(
        EVENTS,
        f"""
        with counts as (select k, window_start, count(*) as n from ({assigned(SIZE, SLIDE)}) group by k, window_start)
        select window_start + {SIZE} as window_end, max(n) as most, count(*) as keys, sum(n) as total
        from counts group by window_start""",
    )
    got = result.to_pandas(rs.RunConfig(parallelism=3, max_batch_rows=2_000))
    pd.testing.assert_frame_equal(comparable(got), comparable(expected))


def test_a_window_of_windows_holds_the_windows_that_end_inside_it() -> None:
    frame = out_of_order_events(30_000, keys=5, max_disorder_ms=2_000, seed=9)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.set_column(0, "t", table.column("t").cast(pa.timestamp("ms", tz="UTC")))
    seconds = rs.from_arrow(table).with_watermark("t", "5s").key_by("k").window(rs.Tumbling("1s"))
    per_second = seconds.agg(n=rs.count(), s=rs.sum("v"), m=rs.max("v"))
    per_ten = per_second.key_by("k").window(rs.Tumbling("10s")).agg(n=rs.sum("n"), s=rs.sum("s"), m=rs.max("m"))
    got = per_ten.to_pandas(rs.RunConfig(parallelism=2, max_batch_rows=4_000))
    expected = windows_normalized(windows_sql(frame, rs.Tumbling("10s")))
    pd.testing.assert_frame_equal(windows_normalized(got), expected)


# -- per key and window: q7 ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "ties", "parallelism"), [(1, True, 1), (2, True, 3), (2, False, 2)])
def test_top_rows_per_key_and_window_equal_duckdb(n: int, ties: bool, parallelism: int) -> None:
    frame = EVENTS.iloc[:8_000]
    result = counts(frame).top("v", n, ties=ties).to_pandas(rs.RunConfig(parallelism=parallelism, max_batch_rows=900))
    assert list(result.columns) == ["t", "k", "v", "window_start", "window_end"]
    pd.testing.assert_frame_equal(comparable(result), comparable(window_top_sql(frame, n, ties)))


def test_a_late_row_goes_to_the_side_output_of_a_window_top() -> None:
    source = (
        TestSource()
        .add_batch([{"k": "a", "v": 3, "t": 1_000}, {"k": "a", "v": 3, "t": 2_000}, {"k": "a", "v": 1, "t": 3_000}])
        .advance_watermark(10_000)
        .add_batch([{"k": "a", "v": 9, "t": 4_000}])  # its window fired: late
        .end()
    )
    best = source.stream(time_column="t").key_by("k").window(rs.Tumbling("10s"), late="side").top("v")
    job = best.start(rs.RunConfig(parallelism=2))
    job.wait(60)
    assert sorted(job.results()["t"]) == [1_000, 2_000]  # both rows that tie at 3
    assert job.metrics()["late_rows"] == 1
    assert job.late_events()["v"].tolist() == [9]


# -- running -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("ties", "descending"), [(True, True), (False, False)])
def test_running_top_per_key_equals_duckdb(ties: bool, descending: bool) -> None:
    order = "desc" if descending else "asc"
    rank = f"rank() over (partition by k order by v {order})"
    if not ties:
        rank = f"row_number() over (partition by k order by v {order}, t asc)"
    expected = sql(EVENTS, f"select t, k, v from events qualify {rank} <= 2")
    stream = rs.from_pandas(EVENTS).key_by("k").top("v", 2, ties=ties, descending=descending)
    result = stream.to_pandas(rs.RunConfig(parallelism=2, max_batch_rows=1_500))
    pd.testing.assert_frame_equal(comparable(result), comparable(expected))


def test_running_top_in_update_mode_emits_a_key_when_its_rows_change() -> None:
    source = (
        TestSource()
        .add_batch([{"k": "a", "v": 1}, {"k": "b", "v": 5}])
        .add_batch([{"k": "a", "v": 2}, {"k": "b", "v": 4}])  # a has a new best; b does not change
        .add_batch([{"k": "b", "v": 5}])  # b gets a tie
        .end()
    )
    sink = ListSink()
    source.stream().key_by("k").top("v", emit="update").write(sink, rs.RunConfig(parallelism=2))
    emitted = [sorted(zip(t.column("k").to_pylist(), t.column("v").to_pylist(), strict=True)) for _, t in sink.batches]
    assert emitted == [[("a", 1), ("b", 5)], [("a", 2)], [("b", 5), ("b", 5)]]


# -- any batching, any parallelism ---------------------------------------------------------------------------


# Each example runs a real job, so shrinking a failure would take many minutes: report it unshrunk.
@settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
@given(
    count=st.integers(1, 3_000),
    keys=st.integers(1, 8),
    seed=st.integers(0, 2**31),
    max_batch_rows=st.integers(1, 4_000),
    parallelism=st.integers(1, 3),
    n=st.integers(1, 3),
)
def test_random_events_batches_and_parallelism_give_the_same_hot_keys(
    count: int, keys: int, seed: int, max_batch_rows: int, parallelism: int, n: int
) -> None:
    frame = events(count, keys=keys, values=5, seed=seed)
    result = hot_keys(frame, rs.RunConfig(parallelism=parallelism, max_batch_rows=max_batch_rows), n=n)
    pd.testing.assert_frame_equal(comparable(result), comparable(hot_keys_sql(frame, n=n)))


# -- checkpoints ---------------------------------------------------------------------------------------------


def slowly(batch: pa.Table) -> pa.Table:
    time.sleep(0.02)
    return batch


def checkpointed(name: str) -> tuple[rs.Stream, pd.DataFrame]:
    """A pipeline over EVENTS that runs for many epochs, and its answer."""
    table = pa.Table.from_pandas(EVENTS, preserve_index=False)
    windows = rs.from_arrow(table).map_batches(slowly, schema=table.schema).with_watermark("t", delay="5s")
    windows = windows.key_by("k").window(rs.Sliding("2s", "500ms"))
    if name == "hot keys":
        return windows.agg(n=rs.count()).key_by("window_start", "window_end").top("n"), hot_keys_sql(EVENTS)
    return windows.top("v", 2), window_top_sql(EVENTS, 2, True)


@pytest.mark.parametrize("name", ["hot keys", "window top"])
def test_restoring_with_another_parallelism_gives_the_same_rows_once(name: str, tmp_path: Path) -> None:
    pipeline, expected = checkpointed(name)
    checkpoints, out = str(tmp_path / "ck"), str(tmp_path / "out")
    for parallelism in (2, 3):  # run part of the input at each parallelism, then stop
        config = rs.RunConfig(parallelism=parallelism, max_batch_rows=1_000, checkpoint_dir=checkpoints)
        job = pipeline.write_parquet(out, config, wait=False)
        target = job.metrics()["epochs_completed"] + 4
        while job.metrics()["epochs_completed"] < target and job.status() == "running":
            time.sleep(0.02)
        job.stop()
        assert job.metrics()["epochs_completed"] < 20  # stopped midway: 20 epochs read everything
    pipeline.write_parquet(out, rs.RunConfig(parallelism=1, max_batch_rows=1_000, checkpoint_dir=checkpoints))
    written = pq.read_table(out).to_pandas()
    pd.testing.assert_frame_equal(comparable(written), comparable(expected))


def test_read_state_shows_the_candidates_of_open_windows(tmp_path: Path) -> None:
    rows = pa.table({"t": [1_000, 2_000, 3_000, 95_000], "k": ["a", "a", "b", "a"], "v": [4, 4, 1, 7]})
    source = TestSource().add_batch(rows)  # unbounded: no end, so windows stay open
    stream = source.stream(time_column="t").with_watermark("t", delay="60s")
    best = stream.key_by("k").window(rs.Tumbling("10s")).top("v", name="best")
    checkpoints = str(tmp_path / "ck")
    job = best.start(rs.RunConfig(parallelism=2, checkpoint_dir=checkpoints))
    deadline = time.monotonic() + 60
    while job.metrics()["epochs_completed"] < 1:  # one epoch reads the batch; the job is idle after it
        assert time.monotonic() < deadline
        time.sleep(0.05)
    job.stop()
    state = rs.read_state(checkpoints).sort_values(["k", "t"]).reset_index(drop=True)
    # The watermark is 95 s - 60 s = 35 s: the windows of 0-10 s fired and were freed.
    assert state.to_dict("records") == [{"t": 95_000, "k": "a", "v": 7, "window_start": 90_000, "window_end": 100_000}]
    assert sorted(job.results()["v"]) == [1, 4, 4]


# -- the documented example ----------------------------------------------------------------------------------


def test_the_keyed_stream_docstring_example_runs() -> None:
    example = rs.KeyedStream.__doc__.split("::", 1)[1].split("\n\n    The window must", 1)[0]
    code = "\n".join(line.removeprefix("        ") for line in example.splitlines())
    exec(compile(code, "raystream/stream.py", "exec"), {"__name__": "__example__"})
