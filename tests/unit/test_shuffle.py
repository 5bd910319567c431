"""Hash partitioning is stable, covers every key group once, and splits tables exactly."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from raystream.kernels.hashing import (
    hash_keys,
    key_groups,
    key_groups_of_partition,
    partition_of_key_groups,
    split_by_partition,
)

TABLE = pa.table(
    {
        "i": pa.array([1, 2, None, 1, -5], pa.int64()),
        "s": ["x", "y", "x", None, "long string key"],
        "f": [0.0, -0.0, 1.5, None, 2.5],
        "t": pa.array([1, 2, 3, None, 5], pa.timestamp("ms")),
    }
)


def test_equal_keys_hash_alike_across_types_of_chunking() -> None:
    chunked = pa.Table.from_batches(TABLE.to_batches(max_chunksize=2))
    for column in TABLE.column_names:
        assert hash_keys(TABLE, (column,)).tolist() == hash_keys(chunked, (column,)).tolist()
    assert hash_keys(TABLE, ("f",))[0] == hash_keys(TABLE, ("f",))[1]  # 0.0 == -0.0
    assert hash_keys(TABLE, ("s",))[0] == hash_keys(TABLE, ("s",))[2]


def test_int_width_does_not_change_the_hash() -> None:
    narrow = pa.table({"k": pa.array([1, 2, 3], pa.int32())})
    wide = pa.table({"k": pa.array([1, 2, 3], pa.int64())})
    assert hash_keys(narrow, ("k",)).tolist() == hash_keys(wide, ("k",)).tolist()


def test_hash_is_the_same_in_another_process() -> None:
    """Key groups are saved in checkpoints, so the hash must not be salted per process."""
    here = hash_keys(TABLE, ("s", "i")).tolist()
    code = (
        "import pyarrow as pa; from raystream.kernels.hashing import hash_keys;"
        "t = pa.table({'i': pa.array([1, 2, None, 1, -5], pa.int64()),"
        " 's': ['x', 'y', 'x', None, 'long string key']});"
        "print(hash_keys(t, ('s', 'i')).tolist())"
    )
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert there.strip() == str(here)


@pytest.mark.parametrize("partitions", [1, 2, 3, 4, 7, 128])
def test_key_group_ranges_partition_the_key_groups(partitions: int) -> None:
    owners = partition_of_key_groups(np.arange(128), 128, partitions)
    for p in range(partitions):
        assert list(key_groups_of_partition(p, 128, partitions)) == np.nonzero(owners == p)[0].tolist()


def test_split_by_partition_keeps_every_row_once() -> None:
    table = pa.table({"k": np.arange(1000) % 37, "v": np.arange(1000)})
    groups = key_groups(table, ("k",), 128)
    parts = split_by_partition(table, partition_of_key_groups(groups, 128, 4), 4)
    assert sum(p.num_rows for p in parts) == 1000
    assert sorted(v for p in parts for v in p.column("v").to_pylist()) == list(range(1000))
    for p, part in enumerate(parts):
        owned = set(key_groups_of_partition(p, 128, 4))
        assert set(key_groups(part, ("k",), 128).tolist()) <= owned
