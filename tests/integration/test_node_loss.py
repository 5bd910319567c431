"""Acceptance: a checkpointed job survives the loss of a worker node, and its output is exact.

A 2-node Ray cluster (``ray.cluster_utils.Cluster``, both nodes on this
machine) runs a windowed job whose actors are spread over both nodes. The
worker node is removed once some epochs are checkpointed; the job must
move its actors to the node that is alive and finish with the same output.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray
from ray.cluster_utils import Cluster
from windows_oracle import normalized, out_of_order_events, windows_sql

import raystream as rs


def slowly(batch: pa.Table) -> pa.Table:
    # Slow enough that the job still runs when Ray notices the lost node (about 80 epochs of 50 ms or more):
    # a job that ends first never calls its dead actors, and proves nothing.
    time.sleep(0.05)
    return batch


def test_a_job_survives_losing_a_worker_node(two_nodes: Cluster, tmp_path: Path) -> None:
    frame = out_of_order_events(40_000, keys=20, max_disorder_ms=2_000, seed=21)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    events = rs.from_arrow(table, time_column="t").map_batches(slowly, schema=table.schema)
    windows = events.with_watermark("t", delay="5s").key_by("k").window(rs.Tumbling("10s"))
    stream = windows.agg(n=rs.count(), s=rs.sum("v"), m=rs.max("v"))
    config = rs.RunConfig(parallelism=2, max_batch_rows=250, checkpoint_dir=str(tmp_path / "ck"))
    job = stream.write_parquet(str(tmp_path / "out"), config, wait=False)

    worker = next(node for node in two_nodes.worker_nodes)
    deadline = time.monotonic() + 120
    while job.metrics()["epochs_completed"] < 5:
        assert time.monotonic() < deadline and job.status() == "running", job.metrics()
        time.sleep(0.02)
    on_worker = [a for a, node in job.metrics()["actor_nodes"].items() if node == worker.node_id]
    assert on_worker, "no actor was placed on the worker node: the test would prove nothing"
    two_nodes.remove_node(worker, allow_graceful=False)  # a crash: Ray learns of it only by its health checks

    job.wait(timeout=300)
    assert job.status() == "finished"
    assert job._coordinator.recoveries >= 1
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert set(job.metrics()["actor_nodes"].values()) - {worker.node_id} <= alive
    got = normalized(pq.read_table(tmp_path / "out").to_pandas())
    pd.testing.assert_frame_equal(got, normalized(windows_sql(frame, rs.Tumbling("10s"))))
