"""A windowed Parquet-to-Parquet job with checkpoints, run as its own process by the recovery tests.

    python checkpointed_job.py INPUT OUTPUT CHECKPOINTS [--parallelism N] [--ray-temp-dir DIR]
                               [--kafka BOOTSTRAP_SERVERS --stop-ms MS --group GROUP]

INPUT is a Parquet folder, or with --kafka a topic (read until --stop-ms,
with --group as a consumer group that raystream publishes positions to).

Each epoch is slowed down a little so that a test can kill the process at
a random moment in the middle of the run.
"""

from __future__ import annotations

import argparse
import os
import time

import pyarrow as pa

import raystream as rs

DELAY_S = 0.05  # per batch: a test kills the job mid-run; this gives it a middle


def slowly(batch: pa.Table) -> pa.Table:
    time.sleep(DELAY_S)
    return batch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("checkpoints")
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--ray-temp-dir")
    parser.add_argument("--kafka", help="bootstrap servers: INPUT is then a topic")
    parser.add_argument("--stop-ms", type=int)
    parser.add_argument("--group")
    parser.add_argument("--delay", type=float, default=DELAY_S, help="seconds of sleep per batch")
    args = parser.parse_args()
    global DELAY_S
    DELAY_S = args.delay
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR", _temp_dir=args.ray_temp_dir)
    events = rs.read_parquet(args.input, time_column="t").map_batches(
        slowly, schema=pa.schema([("t", pa.int64()), ("k", pa.int64()), ("v", pa.int64())])
    )
    windows = events.with_watermark("t", delay="5s").key_by("k").window(rs.Tumbling("10s"))
    config = rs.RunConfig(
        parallelism=args.parallelism, max_batch_rows=2_000, checkpoint_dir=args.checkpoints, checkpoint_every=1
    )
    windows.agg(n=rs.count(), s=rs.sum("v"), m=rs.max("v")).write_parquet(args.output, config)
    print("done", flush=True)


if __name__ == "__main__":
    main()
