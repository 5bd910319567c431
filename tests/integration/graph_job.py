"""A job of two sources, a table join and two exactly-once Parquet outputs, run as its own process by the tests.

    python graph_job.py EVENTS_A EVENTS_B TABLE WINDOWS_OUT ALERTS_OUT CHECKPOINTS [--parallelism N]
                        [--delay S] [--broadcast]

EVENTS_A and EVENTS_B are Parquet folders of events (t, k, v); TABLE is a
Parquet file (k, region, weight). The union of both event streams is
joined with the table (left join on k), then written twice: per region and
10 s window to WINDOWS_OUT, and the rows with v > 900 to ALERTS_OUT. The
table is hash-partitioned with the stream, or with --broadcast sent to the
readers. Each batch is slowed down a little so that a test can kill the
process at a random moment in the middle of the run.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import raystream as rs


def slowed(delay_s: float) -> Callable[[pa.Table], pa.Table]:
    def slowly(batch: pa.Table) -> pa.Table:
        time.sleep(delay_s)
        return batch

    return slowly


def build(events_a: str, events_b: str, table_path: str, delay: float, broadcast: bool) -> tuple[rs.Stream, rs.Stream]:
    """The windows and the alerts of the job."""
    schema = pa.schema([("t", pa.int64()), ("k", pa.int64()), ("v", pa.int64())])
    a = rs.read_parquet(events_a, time_column="t").map_batches(slowed(delay), schema=schema)
    b = rs.read_parquet(events_b, time_column="t").map_batches(slowed(delay), schema=schema)
    table = rs.from_arrow(pq.read_table(table_path)) if broadcast else rs.read_parquet(table_path)
    joined = rs.union(a, b).with_watermark("t", delay="5s").join(table, on="k", how="left")
    windows = joined.key_by("region").window(rs.Tumbling("10s")).agg(n=rs.count(), s=rs.sum("v"), m=rs.max("v"))
    return windows, joined.filter(pc.field("v") > 900)


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("events_a", "events_b", "table", "windows_out", "alerts_out", "checkpoints"):
        parser.add_argument(name)
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--delay", type=float, default=0.05)
    parser.add_argument("--broadcast", action="store_true")
    parser.add_argument("--ray-temp-dir")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="ERROR", _temp_dir=args.ray_temp_dir)
    windows, alerts = build(args.events_a, args.events_b, args.table, args.delay, args.broadcast)
    config = rs.RunConfig(
        parallelism=args.parallelism, max_batch_rows=500, checkpoint_dir=args.checkpoints, checkpoint_every=1
    )
    outputs = rs.Outputs().write_parquet(windows, args.windows_out, name="windows")
    outputs.write_parquet(alerts, args.alerts_out, name="alerts").run(config)
    print("done", flush=True)


if __name__ == "__main__":
    main()
