"""The throughput cost of checkpointing every epoch, on a windowed job.

    python -m bench.checkpoint_cost --events 2000000 --max-batch-rows 100000 --parallelism 2

Runs the same job (10 s tumbling windows, count and sum per key, to Parquet)
without checkpoints and with a checkpoint after every epoch to a local
folder, and prints events/s for both and the relative cost. Timed from the
first read to the last write; actor start-up is excluded.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import numpy as np
import pyarrow as pa
import ray

import raystream as rs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--keys", type=int, default=1_000)
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--max-batch-rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(include_dashboard=False, logging_level="ERROR")
    rng = np.random.default_rng(1)
    table = pa.table(
        {
            "t": np.arange(args.events, dtype=np.int64) + rng.integers(-500, 500, args.events),
            "k": rng.integers(0, args.keys, args.events),
            "v": rng.integers(0, 100, args.events),
        }
    )
    work = tempfile.mkdtemp(prefix="raystream-bench-ck-")
    runs: dict[str, list[float]] = {"no checkpoints": [], "checkpoint every epoch": []}
    for repeat in range(args.repeats):  # interleaved, so that warm-up and noise hit both alike
        for label in runs:
            checkpoint_dir = f"{work}/ck-{repeat}" if label != "no checkpoints" else None
            stream = rs.from_arrow(table, time_column="t").with_watermark("t", delay="1s")
            windows = stream.key_by("k").window(rs.Tumbling("10s")).agg(n=rs.count(), s=rs.sum("v"))
            config = rs.RunConfig(
                parallelism=args.parallelism,
                max_batch_rows=args.max_batch_rows,
                checkpoint_dir=checkpoint_dir,
                checkpoint_every=1 if checkpoint_dir else None,
            )
            metrics = windows.write_parquet(f"{work}/out-{repeat}-{len(runs[label])}-{label[:2]}", config).metrics()
            runs[label].append(args.events / metrics["run_seconds"])
    results = {label: float(np.median(speeds)) for label, speeds in runs.items()}
    for label, speed in results.items():
        print(f"{label:<24} {speed:>12,.0f} events/s  (median of {args.repeats})")
    cost = 1 - results["checkpoint every epoch"] / results["no checkpoints"]
    print(f"cost of checkpointing every {args.max_batch_rows:,}-row epoch: {cost:.0%}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({**vars(args), "events_per_second": results, "cost": cost}, out, indent=2)
    ray.shutdown()


if __name__ == "__main__":
    main()
