"""Run W2 over many generated events and print the actors' memory over time, to show it stays flat.

    python -m bench.nexmark.soak --events 200000000

The bids come from ``rs.datagen.nexmark`` (no files), so the run can be as
long as wanted. Every 2 s it sums the RSS of the reader actors and of the
partition actors; a job whose memory follows its open windows keeps both
flat however long it runs. ``ARROW_DEFAULT_MEMORY_POOL`` picks Arrow's
allocator, to compare.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import threading

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
    args = parser.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(include_dashboard=False, logging_level=logging.ERROR)
    samples: list[dict[str, int]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(2.0):
            samples.append(actor_rss_mib())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    bids = rs.datagen.nexmark(events=args.events, seed=1)
    out = tempfile.mkdtemp(prefix="raystream-soak-")
    metrics = QUERIES["w2"].build(bids).write_parquet(out, rs.RunConfig(parallelism=args.parallelism)).metrics()
    done.set()
    sampler.join()
    shutil.rmtree(out, ignore_errors=True)
    pool = os.environ.get("ARROW_DEFAULT_MEMORY_POOL", "system (raystream's default)")
    print(
        f"w2 over {args.events:,} generated events: {metrics['run_seconds']:.1f} s, "
        f"{metrics['rows_read'] / metrics['run_seconds'] / 1e6:.2f}M bids/s; Arrow allocator {pool}"
    )
    print("RSS MiB of the readers / the partition actors, every 2 s:")
    print("  " + "  ".join(f"{s['readers']}/{s['partitions']}" for s in samples))
    ray.shutdown()


if __name__ == "__main__":
    main()
