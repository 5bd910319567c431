"""Engine throughput on generated clicks: a projection and a keyed aggregate.

    python -m bench.throughput --events 2000000 --parallelism 2 --max-batch-rows 200000

Prints events/s per workload, timed from the first read to the last write
(Ray start-up and the actors' process start-up are reported separately),
next to pandas on the same data.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

import raystream as rs


def generate(events: int, users: int, seed: int = 1) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "user": rng.integers(0, users, events),
            "price": rng.random(events) * 100,
            "ts": np.arange(events, dtype=np.int64),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--max-batch-rows", type=int, default=200_000)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    started = time.perf_counter()
    ray.init(include_dashboard=False, logging_level="ERROR")
    ray_seconds = time.perf_counter() - started
    table = generate(args.events, args.users)
    config = rs.RunConfig(parallelism=args.parallelism, max_batch_rows=args.max_batch_rows)
    df = table.to_pandas()

    workloads = {
        "projection": (
            lambda: (
                rs.from_arrow(table)
                .with_columns(price=pc.field("price") * 0.908)
                .write_parquet(tempfile.mkdtemp(prefix="raystream-bench-"), config)
            ),
            lambda: df.assign(price=df["price"] * 0.908),
        ),
        "keyed count+sum": (
            lambda: rs.from_arrow(table).key_by("user").agg(n=rs.count(), s=rs.sum("price")).start(config).wait(),
            lambda: df.groupby("user").agg(n=("price", "size"), s=("price", "sum")),
        ),
    }
    results = {"events": args.events, "parallelism": args.parallelism, "ray_start_seconds": ray_seconds, "runs": {}}
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; Ray start-up {ray_seconds:.1f}s")
    print(f"{'workload':<18} {'raystream ev/s':>15} {'actor start s':>14} {'pandas ev/s':>13}")
    for name, (engine, reference) in workloads.items():
        metrics = engine().metrics()
        seconds = metrics["run_seconds"]
        begin = time.perf_counter()
        reference()
        pandas_seconds = time.perf_counter() - begin
        results["runs"][name] = {
            "seconds": seconds,
            "events_per_second": args.events / seconds,
            "actor_startup_seconds": metrics["startup_seconds"],
            "coordinator_ms_per_epoch": metrics["coordinator_ms_per_epoch"],
        }
        print(
            f"{name:<18} {args.events / seconds:>15,.0f} {metrics['startup_seconds']:>14.1f} "
            f"{args.events / pandas_seconds:>13,.0f}"
        )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)
    ray.shutdown()


if __name__ == "__main__":
    main()
