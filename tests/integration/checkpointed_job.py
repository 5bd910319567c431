"""A windowed Parquet-to-Parquet job with checkpoints, run as its own process by the recovery tests.

    python checkpointed_job.py INPUT OUTPUT CHECKPOINTS [--parallelism N] [--ray-temp-dir DIR] [--hold-after S]
                               [--kafka BOOTSTRAP_SERVERS --stop-ms MS --group GROUP] [--mode MODE]

INPUT is a Parquet folder, or with --kafka a topic (read until --stop-ms,
with --group as a consumer group that raystream publishes positions to).
--mode is write_parquet's mode (error, overwrite or append).

Each epoch is slowed down a little so that a test can kill the process at
a random moment in the middle of the run.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from datetime import datetime, timezone

import pyarrow as pa

import raystream as rs


def slowed(delay_s: float) -> Callable[[pa.Table], pa.Table]:
    """A pass-through that takes ``delay_s`` per batch: a test kills the job mid-run, this gives it a middle."""

    def slowly(batch: pa.Table) -> pa.Table:
        time.sleep(delay_s)
        return batch

    return slowly


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
    parser.add_argument("--delay", type=float, default=0.05, help="seconds of sleep per batch")
    parser.add_argument("--hold-after", type=float, default=0.0, help="seconds to wait after the job, before exiting")
    parser.add_argument("--mode", default="error", choices=["error", "overwrite", "append"])
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="ERROR", _temp_dir=args.ray_temp_dir)
    schema = pa.schema([("t", pa.int64()), ("k", pa.int64()), ("v", pa.int64())])
    if args.kafka:
        stop = datetime.fromtimestamp(args.stop_ms / 1000, tz=timezone.utc)
        config = {"group.id": args.group}
        source = rs.read_kafka(
            args.input, args.kafka, schema=schema, time_column="t", stop=stop, consumer_config=config
        )
    else:
        source = rs.read_parquet(args.input, time_column="t")
    events = source.map_batches(slowed(args.delay), schema=schema)
    windows = events.with_watermark("t", delay="5s").key_by("k").window(rs.Tumbling("10s"))
    config = rs.RunConfig(
        parallelism=args.parallelism, max_batch_rows=2_000, checkpoint_dir=args.checkpoints, checkpoint_every=1
    )
    windows.agg(n=rs.count(), s=rs.sum("v"), m=rs.max("v")).write_parquet(args.output, config, mode=args.mode)
    time.sleep(args.hold_after)  # a test may kill the process here, after the last commit
    print("done", flush=True)


if __name__ == "__main__":
    main()
