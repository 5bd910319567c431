"""Partial aggregates merge to the same answer as pandas, however the rows are cut."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

import raystream as rs
from raystream.runtime.keyed import KeyedAggregation

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
