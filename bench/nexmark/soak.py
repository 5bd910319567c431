"""Run a Nexmark query over many generated events and print its memory and state over time, to show both stay flat.

    python -m bench.nexmark.soak --query w2 --events 200000000
    python -m bench.nexmark.soak --query q4 --events 200000000

The events come from ``rs.datagen.nexmark`` (no files), one stream per kind
the query reads, so the run can be as long as wanted. Every 2 s it sums the
RSS of the reader actors and of the partition actors, and reads the state
rows each keyed stage holds (``Job.metrics()["state_rows"]``): a job whose
state follows its open windows or join intervals keeps them flat however
long it runs. ``ARROW_DEFAULT_MEMORY_POOL`` picks Arrow's allocator, to
compare.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time

import psutil
import ray

import raystream as rs
from bench.nexmark.queries import QUERIES


def actor_rss_mib() -> dict[str, int]:
    """The summed RSS, in MiB, of the reader actors and of the partition actors on this machine."""
    totals = {"readers": 0, "partitions": 0}
    for process in psutil.process_iter(["cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        layer = "readers" if command.startswith("ray::ReaderActor") else None
        layer = "partitions" if command.startswith("ray::PartitionActor") else layer
        if layer is not None:
            try:
                totals[layer] += process.memory_info().rss
            except psutil.Error:  # exited between listing and reading
                continue
    return {layer: rss // 2**20 for layer, rss in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000_000)
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--query", default="w2", choices=sorted(QUERIES), help="the query to run")
    parser.add_argument("--actor-cpus", type=float, default=0.1, help="Ray CPUs per actor, as in bench.nexmark")
    args = parser.parse_args()
    query = QUERIES[args.query]

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(include_dashboard=False, logging_level=logging.ERROR)
    streams = {
        kind: rs.datagen.nexmark(events=args.events, kind=kind, seed=1).select(*columns)  # type: ignore[arg-type]
        for kind, columns in query.inputs.items()
    }
    out = tempfile.mkdtemp(prefix="raystream-soak-")
    job = query.build(**streams).write_parquet(
        out, rs.RunConfig(parallelism=args.parallelism, actor_cpus=args.actor_cpus), wait=False
    )
    samples: list[tuple[dict[str, int], int]] = []
    while job.status() == "running":
        time.sleep(2.0)
        samples.append((actor_rss_mib(), sum(job.metrics()["state_rows"].values())))
    metrics = job.wait().metrics()
    shutil.rmtree(out, ignore_errors=True)
    pool = os.environ.get("ARROW_DEFAULT_MEMORY_POOL", "system (raystream's default)")
    print(
        f"{query.name} over {args.events:,} generated events ({metrics['rows_read']:,} read): "
        f"{metrics['run_seconds']:.1f} s, {metrics['rows_read'] / metrics['run_seconds'] / 1e6:.2f}M events/s; "
        f"Arrow allocator {pool}"
    )
    print(f"peak state rows by stage: {metrics['peak_state_rows']}")
    print("RSS MiB of the readers / the partition actors, and the state rows held, every 2 s:")
    print("  " + "  ".join(f"{rss['readers']}/{rss['partitions']} {rows:,}" for rss, rows in samples))
    ray.shutdown()


if __name__ == "__main__":
    main()
