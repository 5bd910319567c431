"""Bad input at run time: a user function that raises fails the job clearly, never hangs, leaks no actor."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

import raystream as rs

pytestmark = pytest.mark.usefixtures("ray_local")

EVENTS = pa.table({"user": np.arange(10_000) % 50, "price": np.arange(10_000) * 1.0})


def explode_on_big_prices(batch: pa.Table) -> pa.Table:
    if max(batch.column("price").to_pylist()) > 7000:
        raise ZeroDivisionError("prices above 7000 are not allowed")
    return batch


def assert_actors_dead(job: rs.Job) -> None:
    """Every actor of the job dies within seconds (``ray.kill`` is asynchronous, so a ping may still land first)."""
    coordinator = job._coordinator
    actors = [a for group in [*coordinator.readers.values(), *coordinator.stage_actors.values()] for a in group]
    assert actors
    for actor in actors:
        deadline = time.monotonic() + 30
        while True:
            try:
                ray.get(actor.ping.remote(), timeout=30)
            except ray.exceptions.RayActorError:
                break
            assert time.monotonic() < deadline, "an actor of the failed job is still alive"
            time.sleep(0.2)


def test_map_batches_error_carries_traceback_epoch_and_split() -> None:
    stream = rs.from_arrow(EVENTS).map_batches(explode_on_big_prices).key_by("user").agg(n=rs.count())
    job = stream.start(rs.RunConfig(parallelism=2, max_batch_rows=1000))
    with pytest.raises(rs.UserFunctionError) as error:
        job.wait(timeout=120)
    message = str(error.value)
    assert "map_batches(explode_on_big_prices) raised in epoch" in message
    assert "split 'from_arrow[" in message
    assert "ZeroDivisionError: prices above 7000 are not allowed" in message
    assert "line" in message and "test_failures.py" in message  # the user function's own traceback
    assert job.status() == "failed"
    assert_actors_dead(job)


def test_error_after_the_shuffle_names_the_partition() -> None:
    def reject(table: pa.Table) -> pa.Table:
        raise ValueError("no thanks")

    stream = rs.from_arrow(EVENTS).key_by("user").agg(n=rs.count()).map_batches(reject)
    with pytest.raises(rs.UserFunctionError, match=r"raised in epoch \d+, partition \d of 'agg'"):
        stream.to_pandas(rs.RunConfig(parallelism=2))


def test_foreach_batch_error_is_reported_with_the_epoch() -> None:
    def broken_sink(table: pa.Table, epoch_id: int) -> None:
        raise RuntimeError("database is down")

    with pytest.raises(rs.UserFunctionError, match="foreach_batch function .*broken_sink.* raised in epoch 1"):
        rs.from_arrow(EVENTS).foreach_batch(broken_sink, rs.RunConfig(max_batch_rows=100_000))


def test_a_udf_returning_the_wrong_type_is_named() -> None:
    stream = rs.from_arrow(EVENTS).map_batches(lambda batch: 42)
    with pytest.raises(
        rs.UserFunctionError, match="must return a pyarrow.Table or a pandas.DataFrame; it returned int"
    ):
        stream.to_pandas()


def test_unknown_key_after_a_udf_is_caught_on_the_first_batch() -> None:
    stream = rs.from_arrow(EVENTS).map_batches(lambda batch: batch).key_by("usr").agg(n=rs.count())
    with pytest.raises(rs.PlanError, match="unknown column 'usr'; the stream has columns: user, price"):
        stream.to_pandas()


def test_foreach_batch_gets_every_row_once_with_increasing_epochs() -> None:
    seen: list[tuple[int, int]] = []
    rs.from_arrow(EVENTS).foreach_batch(
        lambda table, epoch: seen.append((epoch, table.num_rows)), rs.RunConfig(max_batch_rows=3000)
    )
    epochs = [epoch for epoch, _ in seen]
    assert epochs == sorted(epochs) and len(set(epochs)) == len(epochs)
    assert sum(rows for _, rows in seen) == EVENTS.num_rows


def test_write_parquet_partitioned_then_read_back(tmp_path: Path) -> None:
    out = tmp_path / "out"
    rs.from_arrow(EVENTS).with_columns(bucket=lambda t: pa.array(np.asarray(t.column("user")) % 3)).write_parquet(
        str(out), rs.RunConfig(max_batch_rows=2500), partition_by=["bucket"]
    )
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("_")) == ["bucket=0", "bucket=1", "bucket=2"]
    back = rs.read_parquet(str(out)).to_pandas()
    assert len(back) == EVENTS.num_rows and back["price"].sum() == pytest.approx(
        sum(EVENTS.column("price").to_pylist())
    )


def test_write_parquet_dictionary_encodes_only_strings_by_default_and_takes_the_codec(tmp_path: Path) -> None:
    """Dictionary-encoding numbers halves pyarrow's writer speed for files no smaller, so strings only, by default."""
    table = pa.table({"user": pa.array(np.arange(3000) % 7), "name": pa.array([f"n{i % 5}" for i in range(3000)])})

    def encodings(out: Path) -> dict[str, set[str]]:
        files = sorted(out.glob("*.parquet"))
        assert files and not (out / "_staging").exists()
        columns = pq.ParquetFile(files[0]).metadata.row_group(0)
        return {columns.column(i).path_in_schema: set(columns.column(i).encodings) for i in range(2)}

    rs.from_arrow(table).write_parquet(str(tmp_path / "default"), rs.RunConfig(max_batch_rows=1000))
    default = encodings(tmp_path / "default")
    assert "RLE_DICTIONARY" in default["name"] and "RLE_DICTIONARY" not in default["user"]

    rs.from_arrow(table).write_parquet(
        str(tmp_path / "all"), rs.RunConfig(max_batch_rows=1000), compression="zstd", use_dictionary=True
    )
    assert all("RLE_DICTIONARY" in kinds for kinds in encodings(tmp_path / "all").values())
    assert pq.ParquetFile(next((tmp_path / "all").glob("*.parquet"))).metadata.row_group(0).column(0).compression == (
        "ZSTD"
    )
    assert rs.read_parquet(str(tmp_path / "all")).to_arrow().num_rows == 3000


def test_too_many_actors_for_the_cluster_is_a_clear_error() -> None:
    with pytest.raises(rs.ConfigError, match=r"actors at actor_cpus=1 need \d+ CPUs but the Ray cluster has 4"):
        rs.from_arrow(EVENTS).key_by("user").agg(n=rs.count()).to_pandas(rs.RunConfig(parallelism=4, actor_cpus=1))
