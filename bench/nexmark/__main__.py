"""Nexmark on raystream next to DuckDB, on the same Parquet events.

    python -m bench.nexmark --events 20000000 --queries q0,q1,q2,q5,w1,w2,q13,q3,q8 --parallelism 2

Generates the events once (or reuses a dataset made with the same arguments),
starts one local Ray, and runs each query on raystream, timed from the
source's first read to the sink's last write (``run_seconds``; Ray's and the
actors' start-up are reported apart), then the same query in DuckDB. Both
write Parquet; every run checks that raystream's output equals DuckDB's (row
count and an order-independent hash of the rows) and exits with status 1 if
one differs. events/s counts the events of the kinds a query reads (the
bids, or the auctions and persons of q3 and q8).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import ray

import raystream as rs
from bench.nexmark.generate import write_parquet
from bench.nexmark.queries import QUERIES, compare, events_read, input_views, run_duckdb, run_raystream
from raystream.datagen import count_events, events_for


class PeakMemory:
    """Samples the RSS of this process and of every process it started (Ray's, with its workers) until stopped.

    RSS counts pages shared between processes (Ray's object store) once per
    process that maps them, so the sum over processes overstates the total.
    """

    def __init__(self, interval_s: float = 0.2) -> None:
        self.interval_s = interval_s
        self.peak_total = 0
        self.peak_driver = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        while True:
            driver = me.memory_info().rss
            total = driver
            for child in me.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:  # a worker that exited between listing and reading
                    continue
            self.peak_driver = max(self.peak_driver, driver)
            self.peak_total = max(self.peak_total, total)
            if self._stop.wait(self.interval_s):
                return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--events", type=int, default=20_000_000, help="Nexmark events 0..N-1; 92%% are bids")
    size.add_argument("--bids", type=int, help="instead of --events: as many events as make this many bids")
    parser.add_argument("--queries", default="q0,q1,q2,q5,w1,w2,q13", help=f"comma-separated, of {', '.join(QUERIES)}")
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--max-batch-rows", type=int, help="rows per reader per epoch (default: the source's, 400k)")
    parser.add_argument(
        "--actor-cpus",
        type=float,
        default=0.1,
        help="the CPUs Ray reserves per actor (a join query of five stages has 10 actors at --parallelism 2)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", help="the dataset folder (default: a cache folder in the temp dir)")
    parser.add_argument("--work", help="where outputs go while they are checked (default: a new temp dir)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    names = [q.strip() for q in args.queries.split(",") if q.strip()]
    unknown = [q for q in names if q not in QUERIES]
    if unknown or not names:
        parser.error(
            f"--queries: unknown query {unknown[0] if unknown else '(none)'}; choose from {', '.join(QUERIES)}"
        )
    events = events_for("bid", args.bids) if args.bids is not None else args.events
    bids = count_events("bid", 0, events)
    data = Path(args.data or Path(tempfile.gettempdir()) / "raystream-nexmark" / f"events-{events}-seed-{args.seed}")

    kinds = sorted({kind for name in names for kind in QUERIES[name].inputs})
    data = data.with_name(data.name + ("" if kinds == ["bid"] else "-" + "-".join(kinds)))
    started = time.perf_counter()
    write_parquet(data, events, kinds=kinds, seed=args.seed)
    generate_seconds = time.perf_counter() - started
    print(f"data: {data} ({events:,} events, {bids:,} bids; ready in {generate_seconds:.1f}s)")

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    started = time.perf_counter()
    ray.init(include_dashboard=False, logging_level=logging.ERROR)
    ray_seconds = time.perf_counter() - started
    config = rs.RunConfig(parallelism=args.parallelism, max_batch_rows=args.max_batch_rows, actor_cpus=args.actor_cpus)
    con = duckdb.connect()
    input_views(con, str(data), kinds)
    work = Path(args.work or tempfile.mkdtemp(prefix="raystream-nexmark-"))

    results: dict[str, Any] = {
        "events": events,
        "bids": bids,
        "seed": args.seed,
        "parallelism": args.parallelism,
        "max_batch_rows": args.max_batch_rows,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "ray_start_seconds": ray_seconds,
        "duckdb_threads": con.execute("SELECT current_setting('threads')").fetchone()[0],  # type: ignore[index]
        "queries": {},
    }
    print(f"{results['machine']}; Ray start-up {ray_seconds:.1f}s; {config}")
    header = (
        f"{'query':<6} {'raystream ev/s':>15} {'run s':>7} {'actors s':>9} {'ms/epoch':>9} "
        f"{'peak RSS MiB':>13} {'DuckDB ev/s':>13} {'DuckDB s':>9} {'rows':>11}  check"
    )
    print(header)
    failed = []
    for name in names:
        query = QUERIES[name]
        ours, theirs = str(work / name / "raystream"), str(work / name / "duckdb.parquet")
        shutil.rmtree(work / name, ignore_errors=True)
        (work / name).mkdir(parents=True)
        with PeakMemory() as memory:
            metrics = run_raystream(query, str(data), ours, config)
        begin = time.perf_counter()
        run_duckdb(con, query, theirs)
        duckdb_seconds = time.perf_counter() - begin
        check = compare(con, query, ours, theirs)
        shutil.rmtree(work / name, ignore_errors=True)
        seconds = metrics["run_seconds"]
        read = events_read(query, events)
        run = {
            "title": query.title,
            "events_read": read,
            "seconds": seconds,
            "events_per_second": read / seconds,
            "actor_startup_seconds": metrics["startup_seconds"],
            "coordinator_ms_per_epoch": metrics["coordinator_ms_per_epoch"],
            "epochs": metrics["epochs_completed"],
            "rows_read": metrics["rows_read"],
            "late_rows": metrics["late_rows"],
            "peak_rss_bytes": memory.peak_total,
            "peak_driver_rss_bytes": memory.peak_driver,
            "busy_seconds": metrics["busy_seconds"],
            "cpu_seconds": metrics["cpu_seconds"],
            "duckdb_seconds": duckdb_seconds,
            "duckdb_events_per_second": read / duckdb_seconds,
            "check": check,
        }
        results["queries"][name] = run
        if not check["equal"]:
            failed.append(name)
        print(
            f"{name:<6} {run['events_per_second']:>15,.0f} {seconds:>7.2f} {run['actor_startup_seconds']:>9.2f} "
            f"{run['coordinator_ms_per_epoch']:>9.2f} {memory.peak_total / 2**20:>13,.0f} "
            f"{run['duckdb_events_per_second']:>13,.0f} {duckdb_seconds:>9.2f} {check['rows']:>11,}  "
            + ("ok" if check["equal"] else f"DIFFERS (DuckDB: {check['duckdb_rows']:,} rows)")
        )
    print("\nwhere the time went: per layer, seconds in epoch calls summed over its actors (CPU of their processes)")
    for name, run in results["queries"].items():
        layers = ", ".join(
            f"{layer} {busy:.2f} s ({run['cpu_seconds'][layer]:.2f} s CPU)"
            for layer, busy in run["busy_seconds"].items()
        )
        coordinator = run["coordinator_ms_per_epoch"] * run["epochs"] / 1000
        print(f"{name:<6} run {run['seconds']:.2f} s on {os.cpu_count()} cores: {layers}; driver {coordinator:.2f} s")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    ray.shutdown()
    if failed:
        print(f"raystream's output differs from DuckDB's for {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
