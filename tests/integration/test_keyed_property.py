"""Acceptance: keyed agg of all six aggregates equals pandas groupby, for any batch size and parallelism."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import raystream as rs

pytestmark = pytest.mark.usefixtures("ray_local")


def pandas_answer(df: pd.DataFrame) -> pd.DataFrame:
    grouped = df.groupby(["k1", "k2"], dropna=False)["v"]
    answer = pd.DataFrame(
        {
            "n": grouped.size(),
            "s": grouped.sum(min_count=1),
            "lo": grouped.min(),
            "hi": grouped.max(),
            "avg": grouped.mean(),
            "d": grouped.nunique(),
        }
    )
    return answer.reset_index()


def normalized(df: pd.DataFrame) -> pd.DataFrame:
    df = df.assign(k2=df["k2"].astype(object).where(df["k2"].notna(), None))
    ordered = df.sort_values(["k1", "k2"], na_position="last").reset_index(drop=True)
    return ordered[["k1", "k2", "n", "s", "lo", "hi", "avg", "d"]].astype(
        {"n": "int64", "d": "int64", "s": "float64", "lo": "float64", "hi": "float64", "avg": "float64"}
    )


frames = st.integers(min_value=0, max_value=400).flatmap(
    lambda rows: st.tuples(
        st.just(rows),
        st.integers(min_value=1, max_value=8),  # distinct k1 values
        st.floats(min_value=0.0, max_value=0.5),  # share of null values
        st.integers(min_value=0, max_value=2**31),  # seed
    )
)


# Each example runs a real job, so shrinking a failure would take many minutes: report it unshrunk.
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
@given(
    frame=frames,
    max_batch_rows=st.one_of(st.integers(1, 50), st.integers(51, 1000), st.sampled_from([10**5, 10**6])),
    parallelism=st.integers(1, 4),
)
def test_keyed_agg_equals_pandas(frame: tuple[int, int, float, int], max_batch_rows: int, parallelism: int) -> None:
    rows, keys, null_share, seed = frame
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "k1": rng.integers(0, keys, rows),
            "k2": rng.choice(["x", "y", None], rows),
            "v": rng.integers(-50, 50, rows).astype("float64"),
        }
    )
    df.loc[rng.random(rows) < null_share, "v"] = np.nan
    stream = rs.from_pandas(df).key_by("k1", "k2")
    result = stream.agg(
        n=rs.count(), s=rs.sum("v"), lo=rs.min("v"), hi=rs.max("v"), avg=rs.mean("v"), d=rs.count_distinct("v")
    ).to_pandas(rs.RunConfig(parallelism=parallelism, max_batch_rows=max_batch_rows))
    expected = pandas_answer(df)
    if rows == 0:
        assert result.empty
        return
    pd.testing.assert_frame_equal(normalized(result), normalized(expected), check_exact=False, rtol=1e-9)
