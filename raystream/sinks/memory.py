"""Collecting the output in the driver's memory: ``to_arrow``, ``to_pandas`` and ``start``."""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa

from raystream.sinks.base import Sink, SinkContext


class MemorySink(Sink):
    """Keeps every epoch's output on the driver.

    For an upsert stream (running aggregates), :meth:`table` keeps only the
    latest row per key, so it always shows the current value of each key.
    """

    name = "memory"
    on_driver = True

    def __init__(self) -> None:
        self._tables: list[pa.Table] = []
        self._lock = threading.Lock()
        self._context: SinkContext | None = None

    def on_start(self, context: SinkContext) -> None:
        self._context = context

    def write(self, table: pa.Table, epoch_id: int, writer: int) -> None:
        with self._lock:
            self._tables.append(table)

    def table(self) -> pa.Table:
        """The output so far: every row, or the latest row per key for an upsert stream."""
        with self._lock:
            tables = list(self._tables)
        schema = self._context.schema if self._context else None
        if not tables:
            return schema.empty_table() if schema is not None else pa.table({})
        combined = pa.concat_tables(tables, promote_options="default")
        keys = self._context.upsert_keys if self._context else None
        if keys:
            combined = latest_per_key(combined, keys)
        return combined


def latest_per_key(table: pa.Table, keys: tuple[str, ...]) -> pa.Table:
    """Keep the last row of each key, in the order of the keys' last appearance."""
    positions = table.select(list(keys)).append_column("__row", pa.array(np.arange(table.num_rows)))
    last = positions.group_by(list(keys), use_threads=False).aggregate([("__row", "max")]).column("__row_max")
    return table.take(pa.array(np.sort(np.asarray(last))))
