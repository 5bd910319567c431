"""Acceptance: on a 2-node Ray cluster, partition actors land on both nodes and the result is unchanged."""

from __future__ import annotations

import numpy as np
import pandas as pd
import ray
from ray.cluster_utils import Cluster

import raystream as rs


def test_partition_actors_spread_over_both_nodes(two_nodes: Cluster) -> None:
    rng = np.random.default_rng(5)
    df = pd.DataFrame({"user": rng.integers(0, 500, 50_000), "price": rng.random(50_000)})
    stream = rs.from_pandas(df).key_by("user").agg(n=rs.count(), spent=rs.sum("price"))
    job = stream.start(rs.RunConfig(parallelism=4, max_batch_rows=5000))
    job.wait(timeout=300)
    nodes = job.metrics()["actor_nodes"]
    partition_nodes = {node for actor, node in nodes.items() if actor.startswith("agg-")}
    assert len([a for a in nodes if a.startswith("agg-")]) == 4
    assert len(partition_nodes) == 2, nodes
    assert {n["NodeID"] for n in ray.nodes() if n["Alive"]} == set(nodes.values()) | partition_nodes

    got = job.results().sort_values("user").reset_index(drop=True)
    expected = df.groupby("user").agg(n=("price", "size"), spent=("price", "sum")).reset_index()
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
