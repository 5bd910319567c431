"""A windowed Parquet-to-Parquet job with checkpoints, run as its own process by the recovery tests.

    python checkpointed_job.py INPUT OUTPUT CHECKPOINTS [--parallelism N] [--ray-temp-dir DIR]

Each epoch is slowed down a little so that a test can kill the process at
a random moment in the middle of the run.
"""

from __future__ import annotations

import argparse
import os
import time

import pyarrow as pa

import raystream as rs


def slowly(batch: pa.Table) -> pa.Table:
    time.sleep(0.05)  # a test kills the job mid-run; this gives it a middle
    return batch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("checkpoints")
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--ray-temp-dir")
    args = parser.parse_args()
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
