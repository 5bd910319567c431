"""The plan is a graph: several sources, union, table joins, several outputs, and their plan-time errors."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

import raystream as rs
from raystream.errors import PlanError
from raystream.runtime.joins import BroadcastJoinOp, TableJoin
from raystream.runtime.planner import BUILDERS, OutputRequest, plan
from raystream.testing import TestSource

CLICKS = pd.DataFrame({"user": ["a", "b"], "page": [1, 2], "ts": pd.to_datetime(["2026-01-01", "2026-01-02"])})
USERS = pd.DataFrame({"user": ["a", "c"], "country": ["DE", "FR"], "page": [7, 8]})


def clicks() -> rs.Stream:
    return rs.from_pandas(CLICKS, time_column="ts")


def test_every_logical_node_type_has_a_builder() -> None:
    from raystream.plan import logical

    nodes = [
        cls
        for cls in vars(logical).values()
        if isinstance(cls, type) and issubclass(cls, logical.Node) and cls is not logical.Node
    ]
    abstract = {logical.WindowNode, logical.LateEventsNode, logical.DeadLettersNode, logical.StreamJoinNode}
    assert {n for n in nodes if n not in abstract} <= set(BUILDERS)


def test_a_union_of_two_sources_is_two_source_stages_with_edges_into_one_window() -> None:
    windows = rs.union(clicks(), clicks().filter(pa.compute.field("page") > 1))
    physical = plan(windows.key_by("user").window(rs.Tumbling("1h")).agg(n=rs.count()).node)
    assert [s.name for s in physical.sources] == ["source", "source-2"]
    assert [(e.producer, e.consumer, e.exchange) for e in physical.edges] == [
        ("source", "window", "hash"),
        ("source-2", "window", "hash"),
        ("window", "output", "forward"),
    ]
    assert all(s.event_time is not None and s.event_time.column == "ts" for s in physical.sources)
    assert physical.upstream["window"] == ("source", "source-2")


def test_a_hybrid_is_a_history_stage_and_a_live_stage_that_starts_after_it() -> None:
    hybrid = rs.hybrid(clicks(), clicks(), "2026-01-02")
    joined = hybrid.join(rs.from_pandas(USERS), on="user").key_by("user").agg(n=rs.count())
    physical = plan(joined.node)
    assert [(s.name, s.after) for s in physical.sources] == [
        ("history", ("source",)),
        ("live", ("history", "source")),
        ("source", ()),
    ]
    assert physical.upstream["agg"] == ("history", "live")  # the broadcast table holds back no watermark


def test_a_stream_used_by_two_outputs_is_read_once_and_its_shared_operators_run_once() -> None:
    shared = clicks().filter(pa.compute.field("page") > 0)
    first, second = shared.select("user"), shared.key_by("user").agg(n=rs.count())
    physical = plan([OutputRequest("users", first.node), OutputRequest("counts", second.node)])
    assert len(physical.sources) == 1
    source = physical.sources[0]
    assert [type(op).__name__ for op in source.chain] == ["EventTimeOp", "FilterOp"]  # fused once, into the readers
    into = {e.consumer: [type(op).__name__ for op in e.chain] for e in physical.edges_from("source")}
    assert into == {"users": ["SelectOp"], "agg": []}
    assert physical.output("counts").upsert_keys == ("user",)
    assert physical.output("users").upsert_keys is None


def test_outputs_keep_their_names_and_the_stages_named_alike_give_way() -> None:
    windows = clicks().key_by("user").window(rs.Tumbling("1h")).agg(n=rs.count())
    physical = plan([OutputRequest("window", windows.node), OutputRequest("source", clicks().select("user").node)])
    assert [s.name for s in physical.sources] == ["source-2", "source-3"]
    assert [s.name for s in physical.stages] == ["window-2"]
    assert [(e.producer, e.exchange) for e in physical.edges_into("window")] == [("window-2", "forward")]
    assert [(e.producer, e.exchange) for e in physical.edges_into("source")] == [("source-3", "forward")]


def test_a_small_table_is_broadcast_and_a_large_one_is_partitioned() -> None:
    joined = clicks().join(rs.from_pandas(USERS), on="user")
    small = plan(joined.node)
    assert not small.stages and small.broadcasts_from(small.sources[1].name) == ["join"]
    assert [(e.producer, e.consumer, e.exchange) for e in small.edges if e.exchange == "broadcast"] == [
        ("source-2", "join", "broadcast")
    ]
    assert any(isinstance(op, BroadcastJoinOp) for op in small.sources[0].chain)
    assert [s.after for s in small.sources] == [("source-2",), ()]  # the table is read first
    large = plan(joined.node, rs.RunConfig(broadcast_join_max_bytes=0))
    assert isinstance(large.stages[0].operator, TableJoin)
    assert [(e.producer, e.input) for e in large.edges_into("join")] == [("source", 0), ("source-2", 1)]
    assert [s.after for s in large.sources] == [("source-2",), ()]


def test_a_join_names_clashing_columns_with_the_suffix_and_drops_the_tables_keys() -> None:
    joined = clicks().join(rs.from_pandas(USERS), on="user", how="left")
    assert joined.columns == ["user", "page", "ts", "country", "page_right"]
    assert clicks().join(rs.from_pandas(USERS), on="user", suffix="_u").columns == [
        "user",
        "page",
        "ts",
        "country",
        "page_u",
    ]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: clicks().join(TestSource().add_batch(USERS).stream(), on="user"), "the table is unbounded"),
        (lambda: clicks().join(rs.from_pandas(USERS), on="nope"), "'nope'"),
        (lambda: clicks().join(rs.from_pandas(USERS), left_on="user", right_on="country2"), "country2"),
        (lambda: clicks().join(rs.from_pandas(USERS), on="page"), None),
        (
            lambda: clicks().join(rs.from_pandas(USERS.assign(user=[1, 2])), on="user"),
            r"key 'user' is \w*string in the stream and 'user' is int64 in the table",
        ),
        (lambda: clicks().join(rs.from_pandas(USERS), on="user", how="outer"), "how must be 'inner' or 'left'"),
        (
            lambda: rs.from_pandas(CLICKS.assign(page_right=1)).join(rs.from_pandas(USERS), on="user"),
            "becomes 'page_right', which the stream has too",
        ),
        (lambda: rs.union(clicks(), rs.from_pandas(USERS)), "the inputs' columns differ"),
        (
            lambda: rs.union(clicks(), rs.from_pandas(CLICKS.assign(page=CLICKS.page.astype(float)))),
            "column 'page' is int64 in input 1 and double in input 2",
        ),
        (lambda: rs.union(clicks()), "two or more"),
    ],
)
def test_bad_joins_and_unions_are_plan_errors_that_name_the_problem(build: object, message: str | None) -> None:
    if message is None:  # a join on a column both sides have with the same type is fine
        assert callable(build)
        build()
        return
    with pytest.raises(PlanError, match=message):
        assert callable(build)
        build()


def test_a_union_matches_columns_by_name_in_any_order_and_keeps_the_time_column() -> None:
    other = rs.from_pandas(CLICKS[["ts", "page", "user"]], time_column="ts")
    union = clicks().union(other)
    assert union.columns == ["user", "page", "ts"]
    assert union.node.time_column == "ts"


def test_a_union_of_bounded_and_unbounded_streams_is_unbounded() -> None:
    live = TestSource().add_batch(CLICKS).stream()
    with pytest.raises(PlanError, match="unbounded"):
        rs.union(rs.from_pandas(CLICKS), live).to_pandas()


def test_a_small_parquet_table_is_broadcast_by_its_file_size(tmp_path: Path) -> None:
    USERS.to_parquet(tmp_path / "users.parquet")
    joined = clicks().join(rs.read_parquet(str(tmp_path)), on="user")
    assert plan(joined.node).broadcasts_from("source-2") == ["join"]
    size = (tmp_path / "users.parquet").stat().st_size
    partitioned = plan(joined.node, rs.RunConfig(broadcast_join_max_bytes=size - 1))
    assert isinstance(partitioned.stages[0].operator, TableJoin)
