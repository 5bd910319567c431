"""Integration fixtures: one Ray instance per test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import ray
from ray.cluster_utils import Cluster

from raystream.runtime.job import stop_all


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """A local Ray with 4 logical CPUs (on 2 real cores), shared by the tests of one module."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="ERROR", log_to_driver=True)
    yield
    # A job a failed test left running would lose Ray under its feet, which ends the whole process.
    stop_all()
    ray.shutdown()


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[Cluster]:
    """A 2-node Ray cluster on this machine (2 CPUs each), for the tests of one module; they may remove a node."""
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="ERROR")
    yield cluster
    stop_all()
    ray.shutdown()
    cluster.shutdown()
