"""Reader and partition actors: where rows live and are processed.

Both kinds return ``[metadata, *outputs]`` from each epoch call (just the
metadata when the output is written in the actor). The
metadata is a small dict the coordinator reads; the outputs are tables or
partials that stay in the Ray object store and are handed, as object refs,
to the next stage's actors or to a driver-side sink. A distributed sink
writes inside the actor, and only its small result rides in the metadata.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from raystream.errors import PlanError
from raystream.runtime.keyed import KeyedAggregation, Partial
from raystream.runtime.operators import OpContext, StatelessOp, run_chain
from raystream.runtime.planner import KeyedStage
from raystream.runtime.shuffle import key_groups, partition_of_key_groups, split_by_partition
from raystream.sinks.base import Sink
from raystream.sources.base import Source, Split, SplitReader
from raystream.stream import check_columns


@dataclass(frozen=True)
class Downstream:
    """Where an actor's output goes.

    Exactly one of the three is set: the next keyed stage (shuffle by its
    keys over ``num_partitions`` actors), a distributed sink (write here), or
    neither (return the table for a driver-side sink).
    """

    stage: KeyedStage | None = None
    num_partitions: int = 1
    num_key_groups: int = 128
    sink: Sink | None = None

    @property
    def num_outputs(self) -> int:
        """How many output refs an epoch call returns after the metadata."""
        if self.stage is not None:
            return self.num_partitions
        return 0 if self.sink is not None else 1


def _route(table: pa.Table, downstream: Downstream, epoch: int, writer: int) -> tuple[list[Any], Any]:
    """Send ``table`` on: returns (outputs, sink write result)."""
    stage = downstream.stage
    if stage is not None:
        if table.num_rows == 0:
            return [None] * downstream.num_partitions, None
        check_columns(f"key_by ({stage.name})", stage.keys, table.schema)
        # The combiner: reduce to one partial row per key before the shuffle.
        partial = stage.aggregation.partial(table)
        return split_partial(partial, stage.keys, downstream.num_key_groups, downstream.num_partitions), None
    if downstream.sink is not None:
        if table.num_rows == 0:
            return [], None
        return [], downstream.sink.write(table, epoch, writer)
    return [table if table.num_rows else None], None


def split_partial(partial: Partial, keys: tuple[str, ...], num_key_groups: int, num_partitions: int) -> list[Any]:
    """Cut a partial by the partition that owns each key; ``None`` for partitions with no rows."""

    def cut(table: pa.Table) -> list[pa.Table]:
        groups = key_groups(table, keys, num_key_groups)
        return split_by_partition(
            table, partition_of_key_groups(groups, num_key_groups, num_partitions), num_partitions
        )

    tables = cut(partial.table)
    distinct = [cut(t) for t in partial.distinct]
    parts: list[Any] = []
    for p in range(num_partitions):
        part = Partial(tables[p], tuple(d[p] for d in distinct))
        parts.append(part if part.num_rows else None)
    return parts


@dataclass
class _SplitState:
    split: Split
    reader: SplitReader | None
    done: bool = False


class ReaderActor:
    """Reads its splits, runs the fused stateless chain and routes the result.

    Each epoch it reads up to ``max_rows`` rows in all from its splits, in
    split order (a split is read until it is exhausted before the next one
    starts), so that an epoch's size is bounded whatever the number of splits.
    """

    def __init__(self, index: int, source: Source, chain: tuple[StatelessOp, ...], downstream: Downstream) -> None:
        self.index = index
        self.source = source
        self.chain = chain
        self.downstream = downstream
        self.splits: list[_SplitState] = []
        self.node_id = ray.get_runtime_context().get_node_id()

    def assign(self, splits: list[tuple[Split, Any]]) -> int:
        """Add splits, each with the position to resume at (``None``: from its start)."""
        for split, position in splits:
            self.splits.append(_SplitState(split, self.source.open_split(split, position)))
        return len(self.splits)

    def run_epoch(self, epoch: int, max_rows: int) -> list[Any] | dict[str, Any]:
        """Read, transform and route one epoch. Returns ``[metadata, *outputs]``, or the metadata alone."""
        started = time.perf_counter()
        budget = max_rows
        outputs: list[pa.Table] = []
        progress: dict[str, dict[str, Any]] = {}
        rows_in = 0
        for state in self.splits:
            if state.done or budget <= 0:
                continue
            assert state.reader is not None
            batch = state.reader.next_batch(budget)
            ctx = OpContext(epoch, f"split {state.split.split_id!r}")
            if batch is None:
                state.done = True
                state.reader.close()
            elif batch.num_rows:
                budget -= batch.num_rows
                rows_in += batch.num_rows
                out = run_chain(self.chain, batch, ctx)
                if out.num_rows:
                    outputs.append(out)
            progress[state.split.split_id] = {
                "position": state.reader.position(),
                "max_event_time_ms": ctx.max_event_time_ms,
                "rows": 0 if batch is None else batch.num_rows,
                "done": state.done,
            }
        table = _concat(outputs)
        routed, sink_result = _route(table, self.downstream, epoch, self.index)
        meta = {
            "kind": "reader",
            "actor": f"reader-{self.index}",
            "node_id": self.node_id,
            "index": self.index,
            "rows_in": rows_in,
            "rows_out": table.num_rows,
            "splits": progress,
            "done": all(s.done for s in self.splits),
            "sink_result": sink_result,
            "seconds": time.perf_counter() - started,
        }
        return [meta, *routed] if routed else meta

    def ping(self) -> bool:
        return True


class PartitionActor:
    """Holds the keyed state of the key groups it owns and applies a keyed stage to it."""

    def __init__(
        self, stage: KeyedStage, index: int, num_partitions: int, num_key_groups: int, downstream: Downstream
    ) -> None:
        self.stage = stage
        self.index = index
        self.num_partitions = num_partitions
        self.num_key_groups = num_key_groups
        self.downstream = downstream
        self.aggregation: KeyedAggregation = stage.aggregation
        self.state: Partial | None = None
        self.node_id = ray.get_runtime_context().get_node_id()

    def process(
        self, epoch: int, watermark_ms: int, end_of_input: bool, *parts: Partial | None
    ) -> list[Any] | dict[str, Any]:
        """Merge this epoch's partials into the state and emit. Returns ``[metadata, *outputs]``."""
        started = time.perf_counter()
        incoming = [p for p in parts if p is not None]
        emitted: pa.Table | None = None
        if incoming:
            previous = [] if self.state is None else [self.state]
            merged = self.aggregation.merge([*previous, *incoming], track_touched_from=len(previous))
            if self.stage.emit == "update":
                emitted = self.aggregation.finalize(merged, only_touched=True)
            self.state = self.aggregation.strip_touched(merged)
        if end_of_input and self.stage.emit == "final" and self.state is not None:
            emitted = self.aggregation.finalize(self.state)
        ctx = OpContext(epoch, f"partition {self.index} of {self.stage.name!r}")
        table = run_chain(self.stage.chain, emitted, ctx) if emitted is not None else pa.table({})
        routed, sink_result = _route(table, self.downstream, epoch, self.index)
        meta = {
            "kind": "partition",
            "actor": f"{self.stage.name}-{self.index}",
            "node_id": self.node_id,
            "stage": self.stage.name,
            "index": self.index,
            "rows_in": sum(p.num_rows for p in incoming),
            "rows_out": table.num_rows,
            "state_rows": 0 if self.state is None else self.state.num_rows,
            "sink_result": sink_result,
            "seconds": time.perf_counter() - started,
        }
        return [meta, *routed] if routed else meta

    def state_key_groups(self) -> list[int]:
        """The distinct key groups of the keys in this actor's state (for tests and tools)."""
        if self.state is None or self.state.num_rows == 0:
            return []
        groups = key_groups(self.state.table, self.stage.keys, self.num_key_groups)
        return sorted(int(g) for g in np.unique(groups))

    def state_table(self) -> pa.Table:
        """The current value of every key in the state."""
        if self.state is None:
            raise PlanError(f"partition {self.index} of {self.stage.name!r} holds no state yet")
        return self.aggregation.finalize(self.state)

    def ping(self) -> bool:
        return True


def _concat(tables: list[pa.Table]) -> pa.Table:
    if not tables:
        return pa.table({})
    if len(tables) == 1:
        return tables[0]
    return pa.concat_tables(tables, promote_options="default")
