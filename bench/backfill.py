"""Backfill speed: the same windowed job over local Parquet, read plainly, as a pruned backfill, and through rs.hybrid.

    python -m bench.backfill --events 4000000 --days 8 --parallelism 2

Writes ``--events`` page views over ``--days`` days, one Hive folder per day
(``dt=YYYY-MM-DD``), then runs views per page per hour into Parquet three ways:

- ``read_parquet``: the bounded source over every file;
- ``backfill``: ``read_parquet(start=, end=)`` over all days, as ``raystream backfill`` runs it;
- ``hybrid``: ``rs.hybrid`` with that history and a live source that starts after the last day.

Each is timed from the first read to the last write (actor start-up excluded);
events/s are the median of ``--repeats`` interleaved runs.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from datetime import date, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

import raystream as rs

SCHEMA = pa.schema([("ts", pa.timestamp("ms")), ("user", pa.int64()), ("page", pa.int64()), ("price", pa.float64())])


def write_days(folder: str, events: int, days: int, first: date) -> None:
    rng = np.random.default_rng(3)
    per_day = events // days
    for i in range(days):
        day = first + timedelta(days=i)
        start = np.datetime64(day.isoformat(), "ms")
        table = pa.table(
            {
                "ts": start + np.sort(rng.integers(0, 86_400_000, per_day)).astype("timedelta64[ms]"),
                "user": rng.integers(0, 100_000, per_day),
                "page": rng.integers(0, 50, per_day),
                "price": rng.gamma(2.0, 20.0, per_day),
            },
            schema=SCHEMA,
        )
        os.makedirs(f"{folder}/dt={day.isoformat()}", exist_ok=True)
        pq.write_table(table, f"{folder}/dt={day.isoformat()}/part-0.parquet", row_group_size=250_000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=4_000_000)
    parser.add_argument("--days", type=int, default=8)
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--max-batch-rows", type=int, default=250_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(include_dashboard=False, logging_level="ERROR")
    work = tempfile.mkdtemp(prefix="raystream-bench-backfill-")
    first = date(2026, 1, 1)
    end = (first + timedelta(days=args.days)).isoformat()
    write_days(f"{work}/history", args.events, args.days, first)
    after = pa.table({"ts": pa.array([], pa.timestamp("ms")), "user": [], "page": [], "price": []}, schema=SCHEMA)

    def source(how: str) -> rs.Stream:
        path = f"{work}/history"
        if how == "read_parquet":
            return rs.read_parquet(path, time_column="ts")
        history = rs.read_parquet(path, time_column="ts", start=first.isoformat(), end=end)
        if how == "backfill":
            return history
        return rs.hybrid(history, rs.from_arrow(after, time_column="ts"), end)

    runs: dict[str, list[float]] = {"read_parquet": [], "backfill": [], "hybrid": []}
    for repeat in range(args.repeats):  # interleaved, so that warm-up and noise hit all alike
        for how in runs:
            job = (
                source(how)
                .select("ts", "page", "price")
                .with_watermark("ts", delay="1m")
                .key_by("page")
                .window(rs.Tumbling("1h"))
                .agg(views=rs.count(), revenue=rs.sum("price"))
            )
            config = rs.RunConfig(parallelism=args.parallelism, max_batch_rows=args.max_batch_rows)
            metrics = job.write_parquet(f"{work}/out-{how}-{repeat}", config).metrics()
            assert metrics["rows_read"] == args.events // args.days * args.days, metrics["rows_read"]
            runs[how].append(metrics["rows_read"] / metrics["run_seconds"])
    results = {how: float(np.median(speeds)) for how, speeds in runs.items()}
    for how, speed in results.items():
        ratio = speed / results["read_parquet"]
        print(f"{how:<14} {speed:>12,.0f} events/s  ({ratio:.2f}x read_parquet, median of {args.repeats})")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({**vars(args), "events_per_second": results}, out, indent=2)
    ray.shutdown()


if __name__ == "__main__":
    main()
