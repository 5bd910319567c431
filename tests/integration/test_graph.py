"""Acceptance of the graph plan: union, table joins and several outputs, against DuckDB, through kills and rescaling."""

from __future__ import annotations

import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from job_process import kill_at_random_checkpoints, run_job_process

import raystream as rs
from raystream.testing import ListSink, TestSource

pytestmark = pytest.mark.usefixtures("ray_local")

HERE = Path(__file__).resolve().parent
JOB = HERE / "graph_job.py"
PROPERTY = settings(max_examples=6, deadline=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck))
BATCHES = st.sampled_from([1, 7, 1_000, 100_000])
T0 = 1_767_225_600_000  # 2026-01-01, in epoch ms


def sorted_frame(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Rows in one order, nulls as None, so that two answers compare whatever order they came in."""
    frame = frame[columns].astype(object).where(frame[columns].notna(), None)
    return frame.sort_values(columns, key=lambda c: c.astype(str)).reset_index(drop=True)


def keys(draw: st.DrawFn, rows: int, null_share: float) -> pd.array:
    values = draw(st.lists(st.integers(0, 6), min_size=rows, max_size=rows))
    nulls = draw(st.lists(st.floats(0, 1), min_size=rows, max_size=rows))
    return pd.array([None if n < null_share else v for v, n in zip(values, nulls, strict=True)], dtype="Int64")


@st.composite
def join_case(draw: st.DrawFn) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    batch = draw(BATCHES)
    rows = draw(st.integers(0, 40 if batch == 1 else 300))
    stream = pd.DataFrame({"k": keys(draw, rows, 0.1), "v": np.arange(rows, dtype=np.int64)})
    table_rows = draw(st.integers(0, 12))  # keys 0..6 over up to 12 rows: duplicate keys are common
    table = pd.DataFrame({"k": keys(draw, table_rows, 0.15), "v": np.arange(table_rows, dtype=np.int64) * 10})
    table["name"] = [f"n{i}" for i in range(table_rows)]
    return stream, table, batch


@PROPERTY
@given(
    case=join_case(),
    how=st.sampled_from(["inner", "left"]),
    broadcast=st.booleans(),
    parallelism=st.integers(1, 4),
)
def test_a_table_join_equals_duckdb_at_any_parallelism_and_batch_size(
    case: tuple[pd.DataFrame, pd.DataFrame, int], how: str, broadcast: bool, parallelism: int
) -> None:
    stream, table, batch = case
    config = rs.RunConfig(
        parallelism=parallelism, max_batch_rows=batch, broadcast_join_max_bytes=(1 << 20) if broadcast else 0
    )
    joined = rs.from_pandas(stream).join(rs.from_pandas(table), on="k", how=how)  # type: ignore[arg-type]
    got = joined.to_pandas(config)
    assert list(got.columns) == ["k", "v", "v_right", "name"]
    kind = "join" if how == "inner" else "left join"
    con = duckdb.connect()
    con.register("events", stream)
    con.register("users", table)
    expected = con.sql(  # in SQL too, null keys never match
        f"select s.k, s.v, t.v as v_right, t.name from events s {kind} users t on s.k = t.k"
    ).df()
    columns = ["k", "v", "v_right", "name"]
    pd.testing.assert_frame_equal(sorted_frame(got, columns), sorted_frame(expected, columns))


@st.composite
def union_case(draw: st.DrawFn) -> tuple[list[pd.DataFrame], int]:
    batch = draw(BATCHES)
    frames = []
    for _ in range(draw(st.integers(2, 3))):
        rows = draw(st.integers(1, 30 if batch == 1 else 400))
        gaps = draw(st.lists(st.integers(0, 900), min_size=rows, max_size=rows))
        frames.append(
            pd.DataFrame(
                {
                    "t": T0 + np.cumsum(gaps).astype(np.int64),  # in time order at each source: no row is late
                    "k": draw(st.lists(st.integers(0, 3), min_size=rows, max_size=rows)),
                    "v": draw(st.lists(st.integers(0, 100), min_size=rows, max_size=rows)),
                }
            )
        )
    return frames, batch


@PROPERTY
@given(case=union_case(), parallelism=st.integers(1, 4))
def test_a_union_of_two_or_three_sources_then_a_window_equals_duckdb(
    case: tuple[list[pd.DataFrame], int], parallelism: int
) -> None:
    frames, batch = case
    streams = [rs.from_pandas(frame, time_column="t") for frame in frames]
    windows = rs.union(*streams).key_by("k").window(rs.Tumbling("2s")).agg(n=rs.count(), s=rs.sum("v"))
    job = windows.start(rs.RunConfig(parallelism=parallelism, max_batch_rows=batch)).wait(120)
    got = job.results()
    assert job.metrics()["late_rows"] == 0
    got["window_start"] = got["window_start"].astype("datetime64[ms]").astype("int64")
    events = pd.concat(frames)  # noqa: F841 - read by DuckDB
    expected = duckdb.sql(
        "select k, t // 2000 * 2000 as window_start, count(*) as n, sum(v) as s from events group by all"
    ).df()
    columns = ["k", "window_start", "n", "s"]
    pd.testing.assert_frame_equal(
        sorted_frame(got.astype({c: "int64" for c in columns}), columns),
        sorted_frame(expected.astype({c: "int64" for c in columns}), columns),
    )


def at(seconds: float) -> datetime:
    return datetime(2026, 3, 1, 12) + timedelta(seconds=seconds)


def test_a_union_fires_no_window_before_its_slow_input_passes_it_and_makes_no_row_late() -> None:
    fast, slow = TestSource(), TestSource()
    for first in range(0, 60, 20):
        fast.add_batch([{"ts": at(second), "user": "a"} for second in range(first, first + 20, 2)])
    fast.end()
    for _ in range(20):  # the slow source says nothing for 20 polls, while the fast one is read to its end
        slow.pause(0.01)
    for second in range(1, 60, 4):
        slow.add_batch([{"ts": at(second), "user": "a"}]).pause(0.01)
    slow.end()
    union = rs.union(fast.stream(time_column="ts"), slow.stream(time_column="ts"))
    sink = ListSink()
    job = union.key_by("user").window(rs.Tumbling("10s")).agg(n=rs.count()).write(sink, wait=False)
    deadline = time.monotonic() + 30
    while job.metrics()["splits"].get("source/test-0", {}).get("done") is not True:  # the fast input is read
        assert time.monotonic() < deadline and job.status() == "running", job.metrics()
        time.sleep(0.02)
    assert job.metrics()["splits"]["source-2/test-0"]["rows"] == 0  # the slow one still pauses
    assert sink.rows() == []  # and its watermark holds every window back
    job.wait(60)
    assert job.metrics()["late_rows"] == 0
    counts = {(row["window_start"] - at(0)).total_seconds(): row["n"] for row in sink.rows()}
    assert counts == {0.0: 5 + 3, 10.0: 5 + 2, 20.0: 5 + 3, 30.0: 5 + 2, 40.0: 5 + 3, 50.0: 5 + 2}


def test_several_outputs_share_one_read_and_report_each_their_rows() -> None:
    frame = pd.DataFrame({"k": np.arange(1_000) % 7, "v": np.arange(1_000)})
    source = TestSource().add_batch(frame).end()
    events = source.stream()
    outputs = rs.Outputs().collect(events.filter(pa.compute.field("v") < 10), name="small")
    outputs.collect(events.key_by("k").agg(n=rs.count()), name="counts")
    job = outputs.run(rs.RunConfig(parallelism=2))
    metrics = job.metrics()
    assert metrics["rows_read"] == 1_000  # each event read once for both outputs
    assert metrics["outputs"]["small"]["rows_written"] == 10
    assert sorted(job.results("small")["v"]) == list(range(10))
    assert job.results("counts").set_index("k")["n"].to_dict() == frame.groupby("k").size().to_dict()
    assert job.outputs == ["small", "counts"]
    with pytest.raises(TypeError, match="name one of the job's outputs: small, counts"):
        job.results()


# -- the job of two sources, a join and two exactly-once outputs --------------------------------------


@pytest.fixture(scope="module")
def graph_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    rng = np.random.default_rng(3)
    folder = tmp_path_factory.mktemp("graph")
    for name, count in (("a", 18_000), ("b", 12_000)):
        times = T0 + np.sort(rng.integers(0, 120_000, count))
        frame = pd.DataFrame({"t": times, "k": rng.integers(0, 20, count), "v": rng.integers(0, 1_000, count)})
        (folder / name).mkdir()
        for part in range(2):
            chunk = frame.iloc[part * count // 2 : (part + 1) * count // 2]
            pq.write_table(pa.Table.from_pandas(chunk, preserve_index=False), folder / name / f"part-{part}.parquet")
    table = pd.DataFrame(
        {
            "k": pd.array([*range(15), 3, 4, None], dtype="Int64"),  # keys 15..19 match nothing; 3 and 4 twice
            "region": [f"r{i % 4}" for i in range(18)],
            "weight": np.arange(18, dtype=np.float64),
        }
    )
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), folder / "table.parquet")
    return {"a": folder / "a", "b": folder / "b", "table": folder / "table.parquet"}


def expected_outputs(inputs: dict[str, Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    con = duckdb.connect()
    a, b, table = (str(inputs[name]) for name in ("a", "b", "table"))
    con.sql(
        f"create view joined as select e.t, e.k, e.v, t.region, t.weight from "
        f"(select * from '{a}/*.parquet' union all select * from '{b}/*.parquet') e "
        f"left join '{table}' t on e.k = t.k"
    )
    windows = con.sql(
        "select region, t // 10000 * 10000 as window_start, count(*) as n, sum(v) as s, max(v) as m "
        "from joined group by all"
    ).df()
    alerts = con.sql("select * from joined where v > 900").df()
    return windows, alerts


def read_outputs(windows_out: Path, alerts_out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    windows = pq.read_table(windows_out).to_pandas()
    windows["window_start"] = windows["window_start"].astype("datetime64[ms]").astype("int64")
    return windows, pq.read_table(alerts_out).to_pandas()


def assert_exact(got: tuple[pd.DataFrame, pd.DataFrame], expected: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    window_columns, alert_columns = ["region", "window_start", "n", "s", "m"], ["t", "k", "v", "region", "weight"]
    pd.testing.assert_frame_equal(
        sorted_frame(got[0], window_columns), sorted_frame(expected[0], window_columns), check_dtype=False
    )
    pd.testing.assert_frame_equal(
        sorted_frame(got[1], alert_columns), sorted_frame(expected[1], alert_columns), check_dtype=False
    )


def graph_args(inputs: dict[str, Path], tmp_path: Path, *extra: str) -> list[str]:
    out = [str(tmp_path / "windows"), str(tmp_path / "alerts"), str(tmp_path / "ck")]
    return [str(inputs["a"]), str(inputs["b"]), str(inputs["table"]), *out, *extra]


@pytest.mark.slow
def test_a_two_source_join_job_killed_three_times_gives_each_output_exactly(
    graph_inputs: dict[str, Path], tmp_path: Path
) -> None:
    args = graph_args(graph_inputs, tmp_path, "--delay", "0.1")
    checkpoints = tmp_path / "ck"
    kill_at_random_checkpoints(JOB, args, checkpoints, seed=11)
    assert run_job_process(JOB, args)
    assert_exact(read_outputs(tmp_path / "windows", tmp_path / "alerts"), expected_outputs(graph_inputs))


@pytest.mark.parametrize("broadcast", [False, True], ids=["partitioned", "broadcast"])
def test_restoring_the_join_job_at_another_parallelism_gives_the_same_outputs(
    graph_inputs: dict[str, Path], tmp_path: Path, broadcast: bool
) -> None:
    sys.path.insert(0, str(HERE))
    from graph_job import build

    windows, alerts = build(str(graph_inputs["a"]), str(graph_inputs["b"]), str(graph_inputs["table"]), 0.0, broadcast)
    checkpoints = str(tmp_path / "ck")
    for parallelism, stop_early in ((3, True), (1, False)):
        config = rs.RunConfig(
            parallelism=parallelism, max_batch_rows=1_500, checkpoint_dir=checkpoints, checkpoint_every=1
        )
        outputs = rs.Outputs().write_parquet(windows, str(tmp_path / "windows"), name="windows")
        job = outputs.write_parquet(alerts, str(tmp_path / "alerts"), name="alerts").start(config)
        if stop_early:
            deadline = time.monotonic() + 60
            while job.metrics()["rows_read"] < 8_000:
                assert time.monotonic() < deadline and job.status() == "running", job.metrics()
                time.sleep(0.02)
            job.stop()
            assert job.status() == "stopped"
        else:
            job.wait(120)
    assert_exact(read_outputs(tmp_path / "windows", tmp_path / "alerts"), expected_outputs(graph_inputs))


@pytest.mark.parametrize("broadcast", [True, False], ids=["broadcast", "partitioned"])
def test_a_table_over_its_memory_limit_is_an_error_naming_the_join_and_the_option(broadcast: bool) -> None:
    table = pd.DataFrame({"k": np.arange(5_000, dtype=np.int64), "name": [f"name-{i}" for i in range(5_000)]})
    stream = rs.from_pandas(pd.DataFrame({"k": np.arange(100, dtype=np.int64)}))
    joined = stream.join(rs.from_pandas(table), on="k", name="names")
    config = rs.RunConfig(
        parallelism=2, max_join_table_bytes=10_000, broadcast_join_max_bytes=(10 << 20) if broadcast else 0
    )
    with pytest.raises(rs.RaystreamError, match=r"join \(names\): the table holds [\d,]+ bytes") as raised:
        joined.to_pandas(config)
    assert "RunConfig.max_join_table_bytes=10,000; raise max_join_table_bytes" in str(raised.value)


def test_read_state_shows_the_table_a_partitioned_join_keeps(tmp_path: Path) -> None:
    table = pd.DataFrame({"k": pd.array([1, 2, 2, None], dtype="Int64"), "name": ["a", "b", "c", "d"]})
    stream = rs.from_pandas(pd.DataFrame({"k": np.arange(5, dtype=np.int64)}))
    config = rs.RunConfig(
        parallelism=2, checkpoint_dir=str(tmp_path / "checkpoints"), checkpoint_every=1, broadcast_join_max_bytes=0
    )
    joined = stream.join(rs.from_pandas(table), on="k", name="names").to_pandas(config)
    assert sorted(joined["name"]) == ["a", "b", "c"]
    state = rs.read_state(str(tmp_path / "checkpoints"), operator="names")
    assert sorted(zip(state["k"], state["name"], strict=True)) == [(1, "a"), (2, "b"), (2, "c")]  # no null key
