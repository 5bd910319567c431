"""Drives a sink's lifecycle on the driver.

This is the one place on the driver that may fetch output rows, and only
for sinks that asked for them (``on_driver = True``: memory, print,
foreach_batch): the user wants those rows in the driver process. The
coordinator itself never fetches rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import ray

from raystream.sinks.base import Sink, SinkContext


class SinkRunner:
    """Calls a sink's lifecycle methods in the documented order."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        # The newest epoch this process delivered. A replay after an actor failure runs epochs again;
        # a driver-side sink has their output already, so it is not handed over twice.
        self.delivered_epoch = 0

    def start(self, context: SinkContext) -> None:
        self.sink.on_start(context)

    def complete_epoch(self, epoch: int, output_refs: list[ray.ObjectRef], write_results: list[Any]) -> int:
        """Finish one epoch: write driver-side output, then let the sink make it visible.

        Returns:
            The number of rows written on the driver.
        """
        tables = ray.get(output_refs) if self.sink.on_driver and output_refs else []
        return self.complete_with_tables(epoch, tables, write_results)

    def complete_with_tables(self, epoch: int, tables: list[pa.Table | None], write_results: Sequence[Any] = ()) -> int:
        """Finish one epoch whose output tables are already on the driver (late rows)."""
        results = list(write_results)
        present = [t for t in tables if t is not None and t.num_rows]
        if self.sink.on_driver and epoch <= self.delivered_epoch:
            present = []
        self.delivered_epoch = max(self.delivered_epoch, epoch)
        rows = 0
        if present:
            table = present[0] if len(present) == 1 else pa.concat_tables(present, promote_options="default")
            rows = table.num_rows
            results.append(self.sink.write(table, epoch, 0))
        self.sink.on_epoch_complete(epoch, [r for r in results if r is not None])
        return rows

    def finish(self) -> None:
        self.sink.on_finish()

    def fail(self, error: BaseException) -> None:
        self.sink.on_failure(error)


class SideOutputRouter:
    """Delivers side outputs (late rows, dead letters), fetched on the driver, to one sink per tag."""

    def __init__(self, runners: dict[str, SinkRunner]) -> None:
        self.runners = runners

    def complete_epoch(self, epoch: int, side_refs: list[ray.ObjectRef]) -> None:
        by_tag: dict[str, list[pa.Table | None]] = {tag: [] for tag in self.runners}
        for sides in ray.get(side_refs) if side_refs else []:
            for tag, table in (sides or {}).items():
                by_tag[tag].append(table)
        for tag, runner in self.runners.items():
            runner.complete_with_tables(epoch, by_tag[tag])
