"""Partial aggregates and top rows merge to the same answer as pandas, however the rows are cut or rescaled."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import raystream as rs
from raystream._time import START_OF_TIME_MS
from raystream.aggregates import Top
from raystream.kernels.hashing import key_groups, key_groups_of_partition
from raystream.kernels.keyed import KeyedAggregation, KeyedTop
from raystream.runtime.stateful import KeyedOperator, PerWindowAggregate, PerWindowTop, RunningTop, WindowTop

AGGREGATES = [
    ("n", rs.count()),
    ("c", rs.count("v")),
    ("s", rs.sum("v")),
    ("lo", rs.min("v")),
    ("hi", rs.max("v")),
    ("avg", rs.mean("v")),
    ("d", rs.count_distinct("v")),
]


def pandas_answer(df: pd.DataFrame) -> pd.DataFrame:
    grouped = df.groupby("k", dropna=False)["v"]
    return pd.DataFrame(
        {
            "n": grouped.size(),
            "c": grouped.count(),
            "s": grouped.sum(min_count=1),
            "lo": grouped.min(),
            "hi": grouped.max(),
            "avg": grouped.mean(),
            "d": grouped.nunique(),
        }
    ).reset_index()


def normalized(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values("k", na_position="last").reset_index(drop=True).astype("float64", errors="ignore")


def test_merging_partials_of_any_cut_equals_pandas() -> None:
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"k": rng.choice(["a", "b", "c", None], 500), "v": rng.integers(0, 20, 500).astype(float)})
    df.loc[rng.random(500) < 0.2, "v"] = np.nan
    table = pa.Table.from_pandas(df, preserve_index=False)
    aggregation = KeyedAggregation(["k"], AGGREGATES)
    expected = normalized(pandas_answer(df))
    for cut in (1, 7, 100, 500):
        partials = [aggregation.partial(table.slice(i, cut)) for i in range(0, 500, cut)]
        state = None
        for partial in partials:
            state = partial if state is None else aggregation.strip_touched(aggregation.merge([state, partial], 1))
        assert state is not None
        got = normalized(aggregation.finalize(state).to_pandas())
        pd.testing.assert_frame_equal(got, expected, check_dtype=False)


def test_touched_keys_are_the_keys_of_the_new_partial() -> None:
    aggregation = KeyedAggregation(["k"], [("n", rs.count())])
    old = aggregation.partial(pa.table({"k": ["a", "b"]}))
    new = aggregation.partial(pa.table({"k": ["b", "c", "c"]}))
    merged = aggregation.merge([old, new], track_touched_from=1)
    updated = aggregation.finalize(merged, only_touched=True).to_pydict()
    assert dict(zip(updated["k"], updated["n"], strict=True)) == {"b": 2, "c": 2}


# -- top rows -------------------------------------------------------------------------------------------------


def ranked_by_pandas(df: pd.DataFrame, n: int, ties: bool, descending: bool) -> pd.DataFrame:
    """Per key, SQL's RANK() (ties) or ROW_NUMBER() by the other columns (no ties) <= n; null and NaN dropped."""
    rows = df.dropna(subset=["v"]).assign(key=lambda d: d["k"].fillna("<null>"))
    if ties:
        rank = rows.groupby("key")["v"].rank(method="min", ascending=not descending)
    else:
        rows = rows.sort_values(["key", "v", "x"], ascending=[True, not descending, True])
        rank = rows.groupby("key").cumcount() + 1
    return rows[rank <= n][["k", "v", "x"]]


def by_content(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(["k", "v", "x"], na_position="last").reset_index(drop=True)


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("ties", [True, False])
@pytest.mark.parametrize("descending", [True, False])
def test_top_candidates_of_any_cut_merge_to_the_ranking_of_pandas(n: int, ties: bool, descending: bool) -> None:
    rng = np.random.default_rng(n)
    df = pd.DataFrame(
        {"k": rng.choice(["a", "b", "c", None], 400), "v": rng.integers(0, 6, 400).astype(float), "x": np.arange(400)}
    )
    df.loc[rng.random(400) < 0.1, "v"] = np.nan
    df.loc[rng.random(400) < 0.3, "x"] = 7  # ties=False must break ties by x, duplicates included
    table = pa.Table.from_pandas(df, preserve_index=False)
    ranking = KeyedTop(["k"], Top("v", n, ties, descending))
    expected = by_content(ranked_by_pandas(df, n, ties, descending))
    assert ties or expected.groupby(expected["k"].fillna("")).size().max() <= n
    for cut in (1, 9, 400):
        state = None
        for start in range(0, 400, cut):
            state, _ = ranking.merge(state, [ranking.reduce(table.slice(start, cut))])
        assert state is not None
        pd.testing.assert_frame_equal(by_content(state.to_pandas()), expected, check_dtype=False)


def test_a_key_changes_only_when_a_new_row_enters_its_top() -> None:
    ranking = KeyedTop(["k"], Top("v"))
    state, _ = ranking.merge(None, [pa.table({"k": ["a", "b"], "v": [5, 5]})])
    merged, changed = ranking.merge(state, [pa.table({"k": ["a", "b", "c"], "v": [4, 5, 1]})])
    flags = dict(zip(merged.column("k").to_pylist(), changed.tolist(), strict=True))
    assert flags == {"a": False, "b": True, "c": True}  # a's 4 is no max; b's 5 ties, so b has a new row
    assert sorted(merged.to_pylist(), key=str) == sorted(
        [{"k": "a", "v": 5}, {"k": "b", "v": 5}, {"k": "b", "v": 5}, {"k": "c", "v": 1}], key=str
    )


def test_top_sorts_dictionary_columns_by_their_values() -> None:
    keys = pa.array(["x", "y", "x", "y"]).dictionary_encode()
    table = pa.table({"k": keys, "v": pa.array(["b", "a", "c", "a"]).dictionary_encode()})
    kept = KeyedTop(["k"], Top("v")).reduce(table)
    assert kept.schema == table.schema
    assert sorted(zip(kept.column("k").to_pylist(), kept.column("v").to_pylist(), strict=True)) == [
        ("x", "c"),
        ("y", "a"),
        ("y", "a"),
    ]


# -- the state of top operators, snapshot and restored at another parallelism, without Ray --------------------


def run_epochs(
    operator: KeyedOperator,
    epochs: list[tuple[pa.Table, int]],
    parallelism: int,
    rescale: tuple[int, int] | None = None,
) -> pa.Table:
    """Run ``operator`` as the runtime does: prepare upstream, split by key group, process per partition.

    With ``rescale=(epoch, parallelism)``, the states are snapshot per key
    group after that epoch and restored into that many new states.
    """
    groups = 16
    states = [operator.new_state() for _ in range(parallelism)]
    previous, out = START_OF_TIME_MS, []
    for epoch, (batch, watermark) in enumerate(epochs, start=1):
        prepared = operator.prepare(batch, previous)
        parts = (
            operator.split(prepared.payload, groups, len(states))
            if prepared.payload is not None
            else [None] * len(states)
        )
        for state, part in zip(states, parts, strict=True):
            emitted = state.process([] if part is None else [part], watermark, epoch == len(epochs))
            if emitted.table is not None:
                out.append(emitted.table)
        previous = watermark
        if rescale is not None and epoch == rescale[0]:
            saved: dict[str, list[pa.Table]] = {}
            for state in states:
                for name, table in state.snapshot().items():
                    saved.setdefault(name, []).append(table)
            tables = {name: pa.concat_tables(parts) for name, parts in saved.items()}
            states = [operator.new_state() for _ in range(rescale[1])]
            for index, state in enumerate(states):
                owned = list(key_groups_of_partition(index, groups, len(states)))
                mine = {
                    name: table.filter(pa.array(np.isin(key_groups(table, operator.keys, groups), owned)))
                    for name, table in tables.items()
                }
                state.restore(mine, watermark)
    return pa.concat_tables(out) if out else pa.table({})


def top_operators() -> dict[str, KeyedOperator]:
    time_type = pa.int64()
    common = {"keys": ("k",), "time_column": "t", "time_type": time_type, "late": "drop", "emit": "append"}
    return {
        "window": WindowTop(rs.Sliding("10s", "5s"), Top("v", 2), name="top", allowed_lateness_ms=0, **common),
        "running": RunningTop("top", ("k",), Top("v", 1, ties=False), emit="final"),
    }


@pytest.mark.parametrize("kind", ["window", "running"])
def test_top_state_restored_at_another_parallelism_gives_the_same_output(kind: str) -> None:
    rng = np.random.default_rng(11)
    epochs = []
    for e in range(8):
        times = e * 4_000 + rng.integers(0, 4_000, 300)
        batch = pa.table({"t": times, "k": rng.integers(0, 9, 300), "v": rng.integers(0, 4, 300)})
        epochs.append((batch, e * 4_000 - 1))
    operator = top_operators()[kind]
    uninterrupted = run_epochs(operator, epochs, parallelism=2)
    assert uninterrupted.num_rows > 0
    for rescale in [(3, 1), (4, 3), (5, 2)]:
        restored = run_epochs(operator, epochs, parallelism=2, rescale=rescale)
        columns = uninterrupted.column_names
        assert restored.sort_by([(c, "ascending") for c in columns]).equals(
            uninterrupted.sort_by([(c, "ascending") for c in columns])
        ), rescale


def test_per_window_stages_emit_each_window_when_the_watermark_passes_its_end() -> None:
    windows = pa.table(
        {
            "k": [1, 2, 3, 1, 2],
            "window_end": pa.array([10_000, 10_000, 10_000, 20_000, 20_000], pa.int64()),
            "n": [3, 5, 5, 2, 1],
        }
    )
    top = PerWindowTop("top", ("window_end",), Top("n"))
    agg = PerWindowAggregate("agg", ("window_end",), [("most", rs.max("n")), ("windows", rs.count())])
    for operator in (top, agg):
        state = operator.new_state()
        prepared = operator.prepare(windows, watermark_ms=9_999)
        assert prepared.late_count == 0
        first = state.process([prepared.payload], 10_000, False).table
        assert first is not None and set(first.column("window_end").to_pylist()) == {10_000}
        assert state.num_rows == 1  # window 20 s is open; window 10 s was freed
        saved = state.snapshot()
        again = operator.new_state()
        again.restore(saved, 10_000)
        second = again.process([], 20_000, False).table
        assert second is not None and set(second.column("window_end").to_pylist()) == {20_000}
        assert again.num_rows == 0
    assert agg.prepare(windows, watermark_ms=10_000).late_count == 3  # window 10 s has ended: its rows are late
