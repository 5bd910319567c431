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
        (lambda s: s.write_parquet("/tmp/never", use_dictionary=["usr"]), "write_parquet use_dictionary"),
    ],
)
def test_unknown_column_names_it_and_lists_the_columns(build, operator: str) -> None:
    with pytest.raises(rs.PlanError) as error:
        build(stream())
    message = str(error.value)
    assert message.startswith(operator)
    assert "unknown column" in message and "user, price, ts" in message


def test_an_unknown_parquet_codec_lists_the_ones_there_are() -> None:
    with pytest.raises(rs.PlanError, match=r"compression 'zip' is not available; use one of none, snappy, .*zstd"):
        stream().write_parquet("/tmp/never", compression="zip")


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


# -- top, per-window stages and windows of windows ----------------------------------------------------------------

CLICKS = pd.DataFrame(
    {
        "user": ["a", "b"],
        "price": [1.0, 2.0],
        "tags": [["x"], ["y"]],
        "t": pd.to_datetime(["2026-01-01", "2026-01-02"]),
    }
)
CLICKS_TIME = pa.Table.from_pandas(CLICKS).schema.field("t").type


def windows(**options: object) -> rs.Stream:
    """Counts per user per minute: a window's output, whose event time is its window_end."""
    keyed = rs.from_pandas(CLICKS, time_column="t").key_by("user")
    return keyed.window(rs.Tumbling("1m"), **options).agg(n=rs.count())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda s: s.key_by("user").top("prize"), "top by: unknown column 'prize'; the stream has columns: user"),
        (lambda s: s.key_by("user").top("user"), "by='user' is a key column, so all the rows of a key would tie"),
        (lambda s: s.key_by("user").top("price", n=0), "n must be a positive int"),
        (lambda s: s.key_by("user").top("price", n=True), "n must be a positive int"),
        (lambda s: s.key_by("user").top("price", ties="yes"), "ties must be True or False"),
        (lambda s: s.key_by("user").top(["price"]), "by= must be the name of the column to rank by"),
        (lambda s: s.key_by("user").top("tags"), "by='tags' has type list<item: string>, which has no order"),
        (lambda s: s.key_by("tags").top("price"), "key column 'tags' has type list<item: string>"),
        (
            lambda s: s.key_by("user").top("price", ties=False),
            "ties=False breaks ties by the other columns, and 'tags' has type list<item: string>, which cannot be "
            r"sorted; drop it with select\(...\), or keep ties with ties=True",
        ),
        (lambda s: s.key_by("user").top("price", emit="later"), "top: emit must be 'update' or 'final'"),
    ],
)
def test_top_arguments_are_checked_at_plan_time(build, message: str) -> None:
    with pytest.raises(rs.PlanError, match=message):
        build(rs.from_pandas(CLICKS, time_column="t"))


def test_window_top_needs_fixed_windows_and_free_bound_names() -> None:
    keyed = rs.from_pandas(CLICKS, time_column="t").key_by("user")
    with pytest.raises(rs.PlanError, match="session windows are not supported by top; use rs.Tumbling"):
        keyed.window(rs.Session("1m")).top("price")
    clashing = rs.from_pandas(CLICKS.assign(window_start=1), time_column="t").key_by("user")
    with pytest.raises(rs.PlanError, match="already has a column 'window_start'.*rename or drop it first"):
        clashing.window(rs.Tumbling("1m")).top("price")
    best = keyed.window(rs.Tumbling("1m")).top("price")
    assert best.columns == ["user", "price", "tags", "t", "window_start", "window_end"]
    assert best.schema is not None and best.schema.field("window_end").type == CLICKS_TIME


def test_keyed_by_window_end_after_a_window_is_a_per_window_stage() -> None:
    from raystream.plan.logical import KeyedAggNode, TopNode

    hot = windows().key_by("window_start", "window_end").top("n")
    assert isinstance(hot.node, TopNode) and hot.node.per_window
    assert hot.columns == ["user", "window_start", "window_end", "n"]
    assert hot.node.time_column == "window_end"  # so stages can go on per window
    most = hot.key_by("window_end").agg(most=rs.max("n"))
    assert isinstance(most.node, KeyedAggNode) and most.node.per_window
    assert most.columns == ["window_end", "most"]
    # Not keyed by window_end, or window_end is no window's: running, as before.
    running = windows().key_by("user").top("n")
    assert isinstance(running.node, TopNode) and not running.node.per_window
    landed = pd.DataFrame({"k": [1], "window_end": pd.to_datetime(["2026-01-01"]), "n": [1]})
    from_files = rs.from_pandas(landed, time_column="window_end").key_by("window_end").agg(n=rs.sum("n"))
    assert isinstance(from_files.node, KeyedAggNode) and not from_files.node.per_window
    dropped = windows().select("user", "n", "window_start").key_by("window_start").agg(m=rs.max("n"))
    assert isinstance(dropped.node, KeyedAggNode) and not dropped.node.per_window


def test_a_stage_on_windows_needs_windows_that_fire_once() -> None:
    for options, reason in [({"emit": "update"}, "emit='update'"), ({"allowed_lateness": "5s"}, "allowed_lateness")]:
        with pytest.raises(rs.PlanError, match=f"top: the window 'window' may emit a window more than once .{reason}"):
            windows(**options).key_by("window_end").top("n")
        with pytest.raises(rs.PlanError, match="give that window emit='append' and allowed_lateness='0s'"):
            windows(**options).key_by("window_end").agg(m=rs.max("n"))
        with pytest.raises(rs.PlanError, match="window: the window 'window' may emit a window more than once"):
            windows(**options).key_by("user").window(rs.Tumbling("1h"))
        windows(**options).key_by("user").agg(m=rs.max("n"))  # a running aggregate takes every update, as before


def test_per_window_stages_have_no_emit_option_and_need_a_time_window_end() -> None:
    with pytest.raises(rs.PlanError, match="emit= does not apply when keyed by window_end after a window"):
        windows().key_by("window_end").top("n", emit="update")
    with pytest.raises(rs.PlanError, match="emit= does not apply"):
        windows().key_by("window_end").agg(m=rs.max("n"), emit="final")
    relabelled = windows().with_columns(window_end=pc.field("window_end").cast(pa.string()))
    with pytest.raises(rs.PlanError, match="window_end has type string, not a time"):
        relabelled.key_by("window_end").top("n")


def test_a_window_of_windows_takes_their_last_instant_as_event_time() -> None:
    from raystream.runtime.planner import plan
    from raystream.runtime.stateful import WindowAggregate

    hourly = windows().key_by("user").window(rs.Tumbling("1h")).agg(total=rs.sum("n"))
    stages = plan(hourly.node).stages
    assert [type(s.operator).__name__ for s in stages] == ["WindowAggregate", "WindowAggregate"]
    first, second = (s.operator for s in stages)
    assert isinstance(first, WindowAggregate) and isinstance(second, WindowAggregate)
    assert (first.time_shift_ms, second.time_shift_ms) == (0, -1)
    assert second.time_column == "window_end"


def test_the_watermark_stays_before_every_keyed_stage() -> None:
    with pytest.raises(rs.PlanError, match="set the watermark before key_by"):
        windows().key_by("window_end").top("n").with_watermark("window_end")


def test_an_unnamed_aggregate_says_how_to_name_it() -> None:
    stream = rs.from_pandas(pd.DataFrame({"k": [1], "v": [2]}), time_column="v")
    with pytest.raises(rs.PlanError, match=r"agg: name each aggregate, as agg\(n=rs.count\(\)\)"):
        stream.key_by("k").agg(rs.count())  # type: ignore[arg-type]
    with pytest.raises(rs.PlanError, match=r"agg: name each aggregate, as agg\(n=rs.sum\('v'\)\)"):
        stream.key_by("k").window(rs.Tumbling("1s")).agg(rs.sum("v"))  # type: ignore[arg-type]


def test_an_unknown_aggregate_lists_the_known_ones() -> None:
    with pytest.raises(rs.PlanError, match=r"unknown aggregate 'median'; the aggregates are: rs.count\(\), rs.sum"):
        rs.Aggregate("median", "v")  # type: ignore[arg-type]
    with pytest.raises(rs.PlanError, match=r"rs.sum needs a column"):
        rs.Aggregate("sum")
