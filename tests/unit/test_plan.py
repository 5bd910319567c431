"""Bad pipelines fail at plan time, with messages that name the culprit and the fix."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import raystream as rs
from raystream._time import duration_ms
from raystream.config import RunConfig, SinkConfig, parse_config

EVENTS = pd.DataFrame({"user": ["a", "b"], "price": [1.0, 2.0], "ts": pd.to_datetime(["2026-01-01", "2026-01-02"])})


def stream() -> rs.Stream:
    return rs.from_pandas(EVENTS)


@pytest.mark.parametrize(
    "build, operator",
    [
        (lambda s: s.key_by("usr"), "key_by"),
        (lambda s: s.select("user", "usr"), "select"),
        (lambda s: s.key_by("user").agg(total=rs.sum("prize")), "agg total="),
        (lambda s: s.with_watermark("tss"), "with_watermark"),
        (lambda s: s.write_parquet("/tmp/never", partition_by=["cuntry"]), "write_parquet partition_by"),
    ],
)
def test_unknown_column_names_it_and_lists_the_columns(build, operator: str) -> None:
    with pytest.raises(rs.PlanError) as error:
        build(stream())
    message = str(error.value)
    assert message.startswith(operator)
    assert "unknown column" in message and "user, price, ts" in message


def test_unknown_time_column_at_the_source() -> None:
    with pytest.raises(rs.PlanError, match="unknown column 'when'; the stream has columns: user, price, ts"):
        rs.from_pandas(EVENTS, time_column="when")


def test_time_column_must_hold_times() -> None:
    with pytest.raises(rs.PlanError, match="time column 'user' has type (large_)?string"):
        rs.from_pandas(EVENTS, time_column="user")


def test_bad_expressions_fail_at_plan_time() -> None:
    with pytest.raises(rs.PlanError, match="filter: cannot evaluate"):
        stream().filter(pc.field("nope") > 1)
    with pytest.raises(rs.PlanError, match="with_columns: cannot evaluate"):
        stream().with_columns(x=pc.field("nope") * 2)


def test_schema_follows_the_operators() -> None:
    planned = stream().with_columns(net=pc.field("price") * 0.9).select("user", "net")
    assert planned.columns == ["user", "net"]
    counts = planned.key_by("user").agg(n=rs.count(), avg=rs.mean("net"), d=rs.count_distinct("net"))
    assert counts.columns == ["user", "n", "avg", "d"]
    assert counts.schema is not None
    assert [counts.schema.field(c).type for c in ("n", "avg", "d")] == [pa.int64(), pa.float64(), pa.int64()]


def test_after_a_user_function_columns_are_checked_at_run_time() -> None:
    after_map = stream().map_batches(lambda t: t)
    assert after_map.schema is None
    after_map.key_by("anything")  # no error yet: the function's output is known only when it runs


def test_aggregate_arguments_are_checked() -> None:
    with pytest.raises(rs.PlanError, match="must be an aggregate"):
        stream().key_by("user").agg(n=42)  # type: ignore[arg-type]
    with pytest.raises(rs.PlanError, match="also a key column"):
        stream().key_by("user").agg(user=rs.count())
    with pytest.raises(rs.PlanError, match="name at least one aggregate"):
        stream().key_by("user").agg()
    with pytest.raises(rs.PlanError, match="name= is agg's own option"):
        stream().key_by("user").agg(n=rs.count(), name=rs.count_distinct("price"))  # type: ignore[arg-type]
    clashing = stream().key_by("user").agg({"name": rs.count(), "emit": rs.max("price")})
    assert clashing.columns == ["user", "name", "emit"]


def test_unbounded_sources_cannot_be_collected() -> None:
    with pytest.raises(rs.PlanError, match="read_socket is unbounded"):
        rs.read_socket("localhost", 9).to_pandas()


def test_durations() -> None:
    assert duration_ms("500ms", "x") == 500
    assert duration_ms("10s", "x") == 10_000
    assert duration_ms("1m", "x") == 60_000
    assert duration_ms("1h", "x") == 3_600_000
    with pytest.raises(rs.PlanError, match="'10 parsecs' is not a duration"):
        duration_ms("10 parsecs", "delay")


def test_run_config_is_validated() -> None:
    with pytest.raises(rs.ConfigError, match="RunConfig.parallelism must be a positive int"):
        RunConfig(parallelism=0)
    with pytest.raises(rs.ConfigError, match="max_batch_rows"):
        RunConfig(max_batch_rows=-1)


def test_yaml_config_errors_name_the_key() -> None:
    with pytest.raises(rs.ConfigError, match="unknown key 'run.paralelism'"):
        parse_config(RunConfig, {"paralelism": 2}, "run")
    with pytest.raises(rs.ConfigError, match="'run.parallelism' must be int, got str 'two'"):
        parse_config(RunConfig, {"parallelism": "two"}, "run")
    with pytest.raises(rs.ConfigError, match="'sink.kind' must be one of 'print', 'parquet'"):
        parse_config(SinkConfig, {"kind": "kafkaa"}, "sink")
    assert parse_config(RunConfig, {"actor_cpus": 1}, "run").actor_cpus == 1.0
