"""Drives a sink's lifecycle on the driver.

This is the one place on the driver that may fetch output rows, and only
for sinks that asked for them (``on_driver = True``: memory, print,
foreach_batch): the user wants those rows in the driver process. The
coordinator itself never fetches rows.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import ray

from raystream.sinks.base import Sink, SinkContext


class SinkRunner:
    """Calls a sink's lifecycle methods in the documented order."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    def start(self, context: SinkContext) -> None:
        self.sink.on_start(context)

    def complete_epoch(self, epoch: int, output_refs: list[ray.ObjectRef], write_results: list[Any]) -> int:
        """Finish one epoch: write driver-side output, then let the sink make it visible.

        Returns:
            The number of rows written on the driver.
        """
        rows = 0
        if self.sink.on_driver and output_refs:
            tables = [t for t in ray.get(output_refs) if t is not None and t.num_rows]
            if tables:
                table = tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="default")
                rows = table.num_rows
                write_results = [self.sink.write(table, epoch, 0)]
        self.sink.on_epoch_complete(epoch, [r for r in write_results if r is not None])
        return rows

    def finish(self) -> None:
        self.sink.on_finish()

    def fail(self, error: BaseException) -> None:
        self.sink.on_failure(error)
