"""An interval join job with an exactly-once Parquet output, run as its own process by the tests.

    python stream_join_job.py VIEWS CLICKS OUT CHECKPOINTS [--parallelism N] [--delay S]

VIEWS and CLICKS are Parquet folders of events (ad, t, v, until). Each view
is joined with the clicks on its ad from its time to its ``until``, as an
outer join (a bound that is a column: the join holds the watermark of the
window after it back), and the joined rows are counted per ad and 10 s
window into OUT. Each batch is slowed down a little so that a
test can kill the process at a random moment in the middle of the run.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import pyarrow as pa

import raystream as rs

SCHEMA = pa.schema([("ad", pa.int64()), ("t", pa.int64()), ("v", pa.int64()), ("until", pa.int64())])


def slowed(delay_s: float) -> Callable[[pa.Table], pa.Table]:
    def slowly(batch: pa.Table) -> pa.Table:
        time.sleep(delay_s)
        return batch

    return slowly


def build(views: str, clicks: str, delay: float) -> rs.Stream:
    left, right = (
        rs.read_parquet(path, time_column="t").map_batches(slowed(delay), schema=SCHEMA).with_watermark("t", "2s")
        for path in (views, clicks)
    )
    joined = left.join(right, on="ad", between=("t", "until"), how="outer")
    return joined.key_by("ad").window(rs.Tumbling("10s")).agg(n=rs.count(), clicks=rs.count("t_right"))


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("views", "clicks", "out", "checkpoints"):
        parser.add_argument(name)
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--ray-temp-dir")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="ERROR", _temp_dir=args.ray_temp_dir)
    config = rs.RunConfig(
        parallelism=args.parallelism, max_batch_rows=500, checkpoint_dir=args.checkpoints, checkpoint_every=1
    )
    build(args.views, args.clicks, args.delay).write_parquet(args.out, config)
    print("done", flush=True)


if __name__ == "__main__":
    main()
