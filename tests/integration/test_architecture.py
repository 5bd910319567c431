"""Acceptance: the runtime is what DESIGN.md says.

- With parallelism 4 there are 4 partition actors.
- Each actor's state holds only keys of its own key groups.
- The coordinator never receives a table: no row reaches the driver at all
  when the sink writes from the actors.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

import raystream as rs
from raystream.kernels.hashing import key_groups_of_partition
from raystream.kernels.keyed import Partial

pytestmark = pytest.mark.usefixtures("ray_local")

EVENTS = pa.table({"user": np.arange(20_000) % 997, "price": np.ones(20_000)})


class HeldOpenSource(rs.Source):
    """Yields a table, then stays open with nothing more, so a test can look at the running actors."""

    name = "held_open"
    bounded = False

    def __init__(self, table: pa.Table) -> None:
        self.table = table

    def schema(self) -> pa.Schema:
        return self.table.schema

    def splits(self, parallelism: int) -> list[rs.Split]:
        return [rs.Split(f"held-{i}", self.table.slice(i * 5000, 5000)) for i in range(4)]

    def open_split(self, split: rs.Split, position: Any) -> rs.SplitReader:
        return _HeldOpenReader(split.payload, position or 0)


class _HeldOpenReader(rs.SplitReader):
    def __init__(self, table: pa.Table, offset: int) -> None:
        self.table, self.offset = table, offset

    def next_batch(self, max_rows: int) -> pa.Table:
        batch = self.table.slice(self.offset, max_rows)
        self.offset += batch.num_rows
        if batch.num_rows == 0:
            time.sleep(0.02)
        return batch

    def position(self) -> int:
        return self.offset


def test_partition_actors_own_their_key_groups() -> None:
    stream = rs.from_source(HeldOpenSource(EVENTS)).key_by("user").agg(n=rs.count())
    job = stream.start(rs.RunConfig(parallelism=4, max_batch_rows=1000))
    try:
        deadline = time.time() + 60
        while job.metrics()["rows_read"] < EVENTS.num_rows or len(job.results()) < 997:
            assert time.time() < deadline, job.metrics()
            time.sleep(0.1)
        stages = job._coordinator.stage_actors
        assert len(stages) == 1 and len(stages["agg"]) == 4
        assert len(job._coordinator.readers["source"]) == 4
        total_keys = 0
        for index, actor in enumerate(stages["agg"]):
            owned = set(key_groups_of_partition(index, 128, 4))
            groups = ray.get(actor.state_key_groups.remote())
            assert groups and set(groups) <= owned
            total_keys += ray.get(actor.state_table.remote()).num_rows
        assert total_keys == 997
    finally:
        job.stop()
    assert job.status() == "stopped"
    counts = job.results()
    assert counts["n"].sum() == EVENTS.num_rows


def test_no_table_reaches_the_driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []
    real_get = ray.get

    def recording_get(refs: Any, *args: Any, **kwargs: Any) -> Any:
        values = real_get(refs, *args, **kwargs)
        seen.extend(values if isinstance(values, list) else [values])
        return values

    monkeypatch.setattr(ray, "get", recording_get)
    stream = rs.from_arrow(EVENTS).key_by("user").agg(n=rs.count(), spent=rs.sum("price"))
    stream.write_parquet(str(tmp_path / "out"), rs.RunConfig(parallelism=4, max_batch_rows=2000))
    monkeypatch.undo()

    assert seen, "the coordinator fetched nothing: the recording hook was not used"
    leaked = [type(v).__name__ for v in seen if isinstance(v, (pa.Table, pa.RecordBatch, Partial))]
    assert leaked == []
    assert all(isinstance(v, (dict, int, bool)) for v in seen)
    written = pq.read_table(tmp_path / "out")
    assert written.num_rows == 997 and sum(written.column("n").to_pylist()) == EVENTS.num_rows
