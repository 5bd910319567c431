"""Profile one reader's share of a Nexmark query in this process, without Ray in the way.

    python -m bench.nexmark.profile --query w2 --events 20000000

Builds the query's plan, opens every ``--readers``-th split of the bids
(about what one of that many readers reads) in a
:class:`~raystream.runtime.actors.ReaderActor` object, and runs its epochs
under cProfile, with the watermark following the events as the coordinator
would. The reader routes its output as in a job: a stateless query writes
through the Parquet sink, a keyed one makes the partials it would shuffle.
Prints the CPU seconds and the functions that took them: what bounds a
query whose readers are busy all the time.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from bench.nexmark.generate import write_parquet
from bench.nexmark.queries import QUERIES, WATERMARK_DELAY, input_stream
from raystream._time import duration_ms
from raystream.runtime.actors import Layout, ReaderActor, Route, use_system_allocator
from raystream.runtime.planner import plan
from raystream.sinks.base import SinkContext
from raystream.sinks.parquet import ParquetSink


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bid_queries = sorted(name for name, query in QUERIES.items() if list(query.inputs) == ["bid"])
    parser.add_argument("--query", default="w2", choices=bid_queries, help="a query of the bids alone")
    parser.add_argument("--events", type=int, default=20_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--readers", type=int, default=2, help="profile the share of one of this many readers")
    parser.add_argument("--max-batch-rows", type=int, help="rows per epoch (default: the source's)")
    parser.add_argument("--top", type=int, default=15, help="functions to list")
    args = parser.parse_args()

    data = Path(tempfile.gettempdir()) / "raystream-nexmark" / f"events-{args.events}-seed-{args.seed}"
    write_parquet(data, args.events, kinds=["bid"], seed=args.seed)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    use_system_allocator()
    query = QUERIES[args.query]
    physical = plan(query.build(bid=input_stream(str(data), "bid", query))._node)
    out = tempfile.mkdtemp(prefix="raystream-profile-")
    (source,) = physical.sources
    (edge,) = physical.edges_from(source.name)
    if edge.exchange == "hash":
        operator = physical.stage(edge.consumer).operator
        route = Route(0, edge.chain, operator, edge.input, num_partitions=args.readers)
    else:
        sink = ParquetSink(out)
        sink.on_start(SinkContext(physical.outputs[0].schema, None, True))
        route = Route(0, edge.chain, output=edge.consumer, sink=sink)
    layout = Layout((route,))
    reader = ReaderActor(0, source.name, source.source, source.chain, layout)  # the class, not an actor
    reader.assign([(split, None) for split in source.source.splits(args.readers)[:: args.readers]])
    batch_rows = args.max_batch_rows or source.source.batch_rows

    delay_ms = duration_ms(WATERMARK_DELAY, "watermark delay")
    profile = cProfile.Profile()
    watermark, epoch, rows = -(2**62), 0, 0
    started, cpu_started = time.perf_counter(), time.process_time()
    profile.enable()
    while True:
        result = reader.run_epoch(epoch, batch_rows, {0: watermark})
        meta = result[0] if isinstance(result, list) else result
        rows += meta["rows_in"]
        latest = [p["max_event_time_ms"] for p in meta["splits"].values() if p["max_event_time_ms"] is not None]
        if latest:
            watermark = max(watermark, min(latest) - delay_ms)
        epoch += 1
        if meta["done"]:
            break
    profile.disable()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    print(
        f"{args.query}: one of {args.readers} readers, {rows:,} bids in {epoch} epochs of up to {batch_rows:,} rows: "
        f"{wall:.2f} s, {cpu:.2f} s CPU, {rows / cpu / 1e6:.1f}M bids per CPU second (Arrow {pa.__version__}, "
        f"pool {pa.default_memory_pool().backend_name})"
    )
    pstats.Stats(profile).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
