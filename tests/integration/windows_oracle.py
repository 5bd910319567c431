"""An independent oracle for windows: DuckDB SQL over the same events, in epoch milliseconds."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

import raystream as rs


def out_of_order_events(count: int, keys: int, max_disorder_ms: int, seed: int) -> pd.DataFrame:
    """``count`` events, 10 ms apart on average, each displaced by up to ``max_disorder_ms`` either way.

    Two events can therefore be out of order by up to twice ``max_disorder_ms``.
    """
    rng = np.random.default_rng(seed)
    times = np.arange(count, dtype=np.int64) * 10 + rng.integers(-max_disorder_ms, max_disorder_ms + 1, count)
    return pd.DataFrame(
        {
            "t": times + 1_767_225_600_000,  # 2026-01-01
            "k": rng.integers(0, keys, count),
            "v": rng.integers(0, 1000, count),
        }
    )


def windows_sql(events: pd.DataFrame, window: rs.Tumbling | rs.Sliding | rs.Session) -> pd.DataFrame:
    """count(*), sum(v), max(v) per key and window, with window bounds in epoch ms."""
    con = duckdb.connect()
    con.register("events", events)
    if isinstance(window, rs.Session):
        gap = window.gap_ms
        query = f"""
            with marked as (
                select k, t, v,
                       case when t - lag(t) over (partition by k order by t) <= {gap} then 0 else 1 end as opens
                from events),
            numbered as (
                select *, sum(opens) over (partition by k order by t rows unbounded preceding) as session
                from marked)
            select k, min(t) as window_start, max(t) + {gap} as window_end, count(*) as n, sum(v) as s, max(v) as m
            from numbered group by k, session"""
    else:
        size = window.size_ms
        slide = window.slide_ms if isinstance(window, rs.Sliding) else size
        query = f"""
            with assigned as (
                select k, v, (t // {slide}) * {slide} - j * {slide} as window_start, t
                from events, range(0, {-(-size // slide)}) as r(j))
            select k, window_start, window_start + {size} as window_end, count(*) as n, sum(v) as s, max(v) as m
            from assigned where window_start + {size} > t group by k, window_start"""
    return con.sql(query).df()


def normalized(frame: pd.DataFrame) -> pd.DataFrame:
    """Comparable rows: bounds as epoch ms, sorted, with plain int64 columns."""
    frame = frame.copy()
    for bound in ("window_start", "window_end"):
        column = frame[bound]
        if not pd.api.types.is_integer_dtype(column):
            frame[bound] = pa.array(column).cast(pa.timestamp("ms", tz="UTC")).cast(pa.int64()).to_numpy()
    frame = frame[["k", "window_start", "window_end", "n", "s", "m"]].astype("int64")
    return frame.sort_values(["k", "window_start"]).reset_index(drop=True)
