"""Vectorized hash partitioning: key -> key group -> partition.

A key's hash must be the same in every process and every run, because state
is saved per key group and restored, maybe at another parallelism. Python's
``hash()`` is salted per process, so it is never used here: integers are
mixed with splitmix64 in numpy, and other values are hashed by
``pandas.util.hash_array`` (SipHash with a fixed key) over the distinct
values of the batch only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

#: The default number of key groups. State is saved per key group, so a job
#: can be restored with any parallelism up to this number.
DEFAULT_NUM_KEY_GROUPS = 128

_NULL_HASH = np.uint64(0x6A09E667F3BCC909)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer, over a whole uint64 array."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _hash_column(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    kind = array.type
    if pa.types.is_dictionary(kind):
        array = array.dictionary_decode()
        kind = array.type
    if len(array) == 0:
        return np.empty(0, dtype=np.uint64)
    valid = None if array.null_count == 0 else np.asarray(array.is_valid())
    if pa.types.is_temporal(kind):
        array = array.view(pa.int32() if kind.bit_width == 32 else pa.int64())
        kind = array.type
    if pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        ints = pc.cast(array, pa.int64()).fill_null(0)
        hashes = _mix(np.asarray(ints).astype(np.uint64))
    elif pa.types.is_floating(kind):
        floats = np.asarray(pc.cast(array.fill_null(0.0), pa.float64()), dtype=np.float64)
        floats = floats + 0.0  # folds -0.0 into 0.0, so equal keys hash alike
        hashes = _mix(floats.view(np.uint64))
    else:
        # Strings, binaries and anything else: hash each distinct value once.
        encoded = pc.dictionary_encode(array)
        distinct = encoded.dictionary.to_numpy(zero_copy_only=False)
        distinct_hashes = pd.util.hash_array(distinct.astype(object), categorize=False)
        indices = np.asarray(encoded.indices.fill_null(0))
        hashes = distinct_hashes[indices] if len(distinct_hashes) else np.zeros(len(array), dtype=np.uint64)
    if valid is not None:
        hashes = np.where(valid, hashes, _NULL_HASH)
    return hashes


def hash_keys(table: pa.Table, keys: tuple[str, ...]) -> np.ndarray:
    """Return a stable uint64 hash of the ``keys`` columns of every row."""
    result = np.zeros(table.num_rows, dtype=np.uint64)
    for name in keys:
        result = _mix(result * _GOLDEN + _hash_column(table.column(name)))
    return result


def key_groups(table: pa.Table, keys: tuple[str, ...], num_key_groups: int) -> np.ndarray:
    """Return the key group (0 .. num_key_groups-1) of every row, as int64."""
    return (hash_keys(table, keys) % np.uint64(num_key_groups)).astype(np.int64)


def partition_of_key_groups(groups: np.ndarray, num_key_groups: int, num_partitions: int) -> np.ndarray:
    """Map key groups to partitions in contiguous ranges, as Flink does."""
    return groups * num_partitions // num_key_groups


def key_groups_of_partition(partition: int, num_key_groups: int, num_partitions: int) -> range:
    """The key groups that partition ``partition`` of ``num_partitions`` owns."""
    start = -(-partition * num_key_groups // num_partitions)
    end = -(-(partition + 1) * num_key_groups // num_partitions)
    return range(start, end)


def split_by_partition(table: pa.Table, partitions: np.ndarray, num_partitions: int) -> list[pa.Table]:
    """Cut ``table`` into ``num_partitions`` tables; row i goes to ``partitions[i]``."""
    if num_partitions == 1:
        return [table]
    order = np.argsort(partitions, kind="stable")
    ordered = table.take(pa.array(order))
    counts = np.bincount(partitions, minlength=num_partitions)
    offsets = np.concatenate(([0], np.cumsum(counts)))
    return [ordered.slice(int(offsets[p]), int(counts[p])) for p in range(num_partitions)]
