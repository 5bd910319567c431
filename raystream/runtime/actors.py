"""Reader and partition actors: where rows live and are processed.

Each epoch call returns the values its :class:`Layout` lays out: first a
small metadata dict that the coordinator reads, then, for each out-edge of
the stage, its parts (one per partition of a keyed stage, one table for a
driver-side output, none for a distributed sink, which writes inside the
actor), then the side outputs (``{tag: rows}``) when the stage has any.
Tables stay in the Ray object store and are handed, as object refs, to the
next stage's actors or to a driver-side sink; the coordinator reads only
the metadata.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from raystream._time import START_OF_TIME_MS
from raystream.kernels.hashing import key_groups, key_groups_of_partition, split_by_partition
from raystream.plan.checks import check_columns
from raystream.runtime.checkpoint import CheckpointStore, StateFile
from raystream.runtime.joins import TABLE, BroadcastJoinOp
from raystream.runtime.operators import OpContext, StatelessOp, run_chain
from raystream.runtime.planner import DEAD_LETTERS, KeyedStage
from raystream.runtime.stateful import KeyedOperator, OperatorState
from raystream.sinks.base import Sink
from raystream.sources.base import Source, Split, SplitReader, relabel_dead_letters


def use_system_allocator() -> None:
    """Make the C library's allocator Arrow's default in this actor process, unless the user chose one.

    Arrow's default, mimalloc, hands the memory of each epoch's batches and
    group_by hash tables back to the system and faults it in again the next
    epoch. On Nexmark W2 (``bench/README.md``) the actors spent about a fifth
    less CPU with the system allocator. ``ARROW_DEFAULT_MEMORY_POOL``
    (``mimalloc``, ``jemalloc`` or ``system``), when set, is left to decide.
    """
    if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
        pa.set_memory_pool(pa.system_memory_pool())


@dataclass(frozen=True)
class Route:
    """Where one out-edge of a stage sends the stage's output.

    A ``hash`` edge has the consumer's ``operator``: its rows are prepared
    for it and cut over ``num_partitions`` actors. A ``forward`` edge ends in
    output ``output``: written here by a distributed ``sink`` (as writer
    ``writer_offset`` + the actor's index), or returned for a driver-side one.
    """

    edge: int
    chain: tuple[StatelessOp, ...] = ()
    operator: KeyedOperator | None = None
    input: int = 0
    num_partitions: int = 1
    num_key_groups: int = 128
    output: str | None = None
    sink: Sink | None = None
    writer_offset: int = 0

    @property
    def slots(self) -> int:
        """How many values the route adds to an epoch call's return."""
        if self.operator is not None:
            return self.num_partitions
        return 0 if self.sink is not None else 1


@dataclass(frozen=True)
class Layout:
    """The values an epoch call of a stage returns: metadata, each route's parts, then side outputs.

    ``broadcast``: the stage is a broadcast table's source, and its output
    table is returned whole, right after the metadata.
    """

    routes: tuple[Route, ...] = ()
    sides: bool = False
    broadcast: bool = False

    @property
    def num_returns(self) -> int:
        return 1 + int(self.broadcast) + sum(route.slots for route in self.routes) + int(self.sides)

    def pack(
        self, meta: dict[str, Any], table: pa.Table | None, parts: dict[int, list[Any]], sides: dict[str, Any]
    ) -> Any:
        values: list[Any] = [meta]
        if self.broadcast:
            values.append(table if table is not None and table.num_rows else None)
        for route in self.routes:
            values += parts.get(route.edge, [])
        if self.sides:
            values.append(sides or None)
        return values if len(values) > 1 else meta

    def _start(self, edge: int) -> int:
        position = 1 + int(self.broadcast)
        for route in self.routes:
            if route.edge == edge:
                return position
            position += route.slots
        raise KeyError(edge)

    def parts(self, refs: Sequence[Any], edge: int) -> list[Any]:
        """The refs of edge ``edge``'s parts among the refs an epoch call returned."""
        route = next(route for route in self.routes if route.edge == edge)
        start = self._start(edge)
        return list(refs[start : start + route.slots])

    def side_ref(self, refs: Sequence[Any]) -> Any:
        return refs[-1] if self.sides else None

    def table_ref(self, refs: Sequence[Any]) -> Any:
        return refs[1] if self.broadcast else None


@dataclass
class _Routed:
    parts: dict[int, list[Any]] = field(default_factory=dict)
    late: dict[str, pa.Table] = field(default_factory=dict)
    late_count: int = 0
    #: For each output: the rows sent to it, and the distributed sink's write result.
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)


def _route(
    table: pa.Table, routes: Sequence[Route], epoch: int, writer: int, watermarks: dict[int, int], ctx: OpContext
) -> _Routed:
    """Send ``table`` on every route: to the next stages (prepared and split), to sinks, or to the driver."""
    routed = _Routed()
    for route in routes:
        rows = run_chain(route.chain, table, ctx) if route.chain and table.num_rows else table
        operator = route.operator
        if operator is not None:
            if rows.num_rows == 0:
                routed.parts[route.edge] = [None] * route.num_partitions
                continue
            check_columns(f"key_by ({operator.name})", operator.input_keys(route.input), rows.schema)
            prepared = operator.prepare_input(route.input, rows, watermarks.get(route.edge, START_OF_TIME_MS))
            routed.parts[route.edge] = (
                [None] * route.num_partitions
                if prepared.payload is None
                else operator.split(prepared.payload, route.num_key_groups, route.num_partitions)
            )
            if prepared.late is not None:
                routed.late[operator.name] = prepared.late
            routed.late_count += prepared.late_count
            continue
        assert route.output is not None
        result = None
        if route.sink is not None:
            if rows.num_rows:  # Step 4: a distributed sink stages the rows under the epoch id
                result = route.sink.write(rows, epoch, route.writer_offset + writer)
        else:
            routed.parts[route.edge] = [rows if rows.num_rows else None]
        entry = routed.outputs.setdefault(route.output, {"rows": 0, "results": []})
        entry["rows"] += rows.num_rows
        if result is not None:
            entry["results"].append(result)
    return routed


def _broadcast_joins(chains: Sequence[Sequence[StatelessOp]]) -> dict[str, BroadcastJoinOp]:
    """The broadcast joins in an actor's chains, by name."""
    return {op.name: op for chain in chains for op in chain if isinstance(op, BroadcastJoinOp)}


class _HoldsBroadcastTables:
    """What reader and partition actors share: the broadcast tables of the joins in their chains."""

    joins: dict[str, BroadcastJoinOp]

    def set_broadcast(self, name: str, blocks: list[Any]) -> bool:
        """Keep join ``name``'s table, from the refs of its blocks (read before the stream's first epoch)."""
        tables = ray.get(blocks) if blocks else []
        self.joins[name].set_table(tables)
        return True

    def snapshot_broadcast(self, epoch: int, store: CheckpointStore, name: str) -> list[StateFile]:
        """Save join ``name``'s table with the checkpoint of ``epoch`` (one actor of the job does it)."""
        table = self.joins[name].table
        if table is None or table.num_rows == 0:
            return []
        return [store.write_state(epoch, name, TABLE, 0, [(0, table)])]

    def restore_broadcast(self, store: CheckpointStore, files: list[StateFile]) -> bool:
        """Take the broadcast tables back from a checkpoint."""
        for name, join in self.joins.items():
            tables = [store.read_state(entry) for entry in files if entry.stage == name]
            join.set_table(tables, prepared=True)
        return True


@dataclass
class _SplitState:
    split: Split
    reader: SplitReader | None
    done: bool = False


class ReaderActor(_HoldsBroadcastTables):
    """Reads its splits, runs the source stage's fused stateless chain and routes the result.

    Each epoch it reads up to ``max_rows`` rows in all from its splits, in
    split order (a split is read until it is exhausted before the next one
    starts), so that an epoch's size is bounded whatever the number of splits.
    """

    def __init__(self, index: int, stage: str, source: Source, chain: tuple[StatelessOp, ...], layout: Layout) -> None:
        use_system_allocator()
        self.index = index
        self.stage = stage
        self.source = source
        self.chain = chain
        self.layout = layout
        self.joins = _broadcast_joins([chain, *(route.chain for route in layout.routes)])
        self.splits: list[_SplitState] = []
        self.node_id = ray.get_runtime_context().get_node_id()

    def assign(self, splits: list[tuple[Split, Any]]) -> int:
        """Add splits, each with the position to resume at (``None``: from its start)."""
        for split, position in splits:
            self.splits.append(_SplitState(split, self.source.open_split(split, position)))
        return len(self.splits)

    def close(self) -> None:
        """Release the splits' files and connections (before the actor is killed)."""
        for state in self.splits:
            if state.reader is not None and not state.done:
                state.reader.close()

    def run_epoch(
        self,
        epoch: int,
        max_rows: int,
        watermarks: dict[int, int],
        replay: dict[str, dict[str, Any]] | None = None,
    ) -> list[Any] | dict[str, Any]:
        """Step 1 of the protocol (:mod:`raystream.runtime.checkpointing`): read, transform and route one epoch.

        Returns what ``self.layout`` lays out.

        Args:
            epoch: The epoch id.
            max_rows: The most rows to read, over all splits.
            watermarks: For each out-edge, its consumer's watermark before this epoch, to tell late rows.
            replay: When the epoch is replayed from the write-ahead log:
                for each split the epoch read, the ``position`` it reached
                and the ``budget`` of rows it was given. Other splits are
                not read.
        """
        started, cpu_started = time.perf_counter(), time.process_time()
        budget = max_rows
        outputs: list[pa.Table] = []
        progress: dict[str, dict[str, Any]] = {}
        dead_letters: list[pa.Table] = []
        null_time_rows = 0
        rows_in = 0
        for state in self.splits:
            logged = None if replay is None else replay.get(state.split.split_id)
            if state.done or (budget <= 0 if replay is None else logged is None):
                continue
            assert state.reader is not None
            given = budget if logged is None else logged["budget"]
            if logged is None:
                batch = state.reader.next_batch(given)
            else:
                batch = state.reader.read_until(logged["position"], given)
            ctx = OpContext(epoch, f"split {state.split.split_id!r}", split_id=state.split.split_id, source=self.stage)
            letters = state.reader.take_dead_letters()
            if letters is not None and letters.num_rows:
                # Every dead letter names the stage that read it, as Job.metrics() does, not the source's kind.
                dead_letters.append(relabel_dead_letters(letters, self.stage))
            if batch is None:
                state.done = True
                state.reader.close()
            elif batch.num_rows:
                budget -= batch.num_rows
                rows_in += batch.num_rows
                out = run_chain(self.chain, batch, ctx)
                if out.num_rows:
                    outputs.append(out)
                dead_letters += ctx.dead_letters
                null_time_rows += ctx.null_time_rows
            progress[state.split.split_id] = {
                "budget": given,
                "position": state.reader.position(),
                "max_event_time_ms": ctx.max_event_time_ms,
                "watermark_ms": state.reader.watermark_ms(),
                "rows": 0 if batch is None else batch.num_rows,
                "done": state.done,
                **state.reader.metrics(),
            }
        table = _concat(outputs)
        ctx = OpContext(epoch, f"reader {self.index} of {self.stage!r}")
        routed = _route(table, self.layout.routes, epoch, self.index, watermarks, ctx)
        meta = {
            "kind": "reader",
            "actor": f"{self.stage}-reader-{self.index}" if self.stage != "source" else f"reader-{self.index}",
            "node_id": self.node_id,
            "stage": self.stage,
            "index": self.index,
            "rows_in": rows_in,
            "rows_out": table.num_rows,
            "splits": progress,
            # An unbounded source that discovers splits (Kafka partitions, landing files) may still hand this
            # reader more, so its reader is never done.
            "done": all(s.done for s in self.splits) and (self.source.bounded or not self.source.discovers_splits),
            "late_count": routed.late_count,
            "dead_letters": sum(t.num_rows for t in dead_letters),
            "null_time_rows": null_time_rows,
            "outputs": routed.outputs,
            "seconds": time.perf_counter() - started,
            "cpu_seconds": time.process_time() - cpu_started,
        }
        sides: dict[str, Any] = dict(routed.late)
        if dead_letters:
            sides[DEAD_LETTERS] = pa.concat_tables(dead_letters)
        return self.layout.pack(meta, table, routed.parts, sides)

    def ping(self) -> bool:
        return True


class PartitionActor(_HoldsBroadcastTables):
    """Holds the keyed state of the key groups it owns and applies a keyed stage to it."""

    def __init__(self, stage: KeyedStage, index: int, num_partitions: int, num_key_groups: int, layout: Layout) -> None:
        use_system_allocator()
        self.stage = stage
        self.index = index
        self.num_partitions = num_partitions
        self.num_key_groups = num_key_groups
        self.layout = layout
        self.joins = _broadcast_joins([stage.chain, *(route.chain for route in layout.routes)])
        self.state: OperatorState = stage.operator.new_state()
        self.node_id = ray.get_runtime_context().get_node_id()

    def process(
        self,
        epoch: int,
        watermark_ms: int,
        end_of_input: bool,
        watermarks: dict[int, int],
        parts_per_input: tuple[int, ...],
        *parts: Any,
    ) -> list[Any] | dict[str, Any]:
        """Step 4 of the protocol: merge this epoch's payloads into the state, fire by the watermark, route.

        Args:
            watermark_ms: This stage's watermark after the epoch.
            watermarks: For each out-edge, its consumer's watermark before this epoch, to tell late rows.
            parts_per_input: How many of ``parts`` belong to each input, in input order.
        """
        started, cpu_started = time.perf_counter(), time.process_time()
        grouped: list[list[Any]] = []
        offset = 0
        for count in parts_per_input:
            grouped.append([p for p in parts[offset : offset + count] if p is not None])
            offset += count
        emitted = self.state.process_inputs(grouped, watermark_ms, end_of_input)
        ctx = OpContext(epoch, f"partition {self.index} of {self.stage.name!r}")
        table = run_chain(self.stage.chain, emitted.table, ctx) if emitted.table is not None else pa.table({})
        routed = _route(table, self.layout.routes, epoch, self.index, watermarks, ctx)
        sides: dict[str, Any] = dict(routed.late)
        if emitted.late is not None:
            sides[self.stage.name] = emitted.late
        meta = {
            "kind": "partition",
            "actor": f"{self.stage.name}-{self.index}",
            "node_id": self.node_id,
            "stage": self.stage.name,
            "index": self.index,
            "rows_in": sum(getattr(p, "num_rows", 0) for group in grouped for p in group),
            "rows_out": table.num_rows,
            "state_rows": self.state.num_rows,
            "state_by_input": self.state.state_by_input(),
            "output_hold_ms": self.state.output_hold_ms(),
            "late_count": emitted.late_count + routed.late_count,
            "outputs": routed.outputs,
            "seconds": time.perf_counter() - started,
            "cpu_seconds": time.process_time() - cpu_started,
        }
        return self.layout.pack(meta, None, routed.parts, sides)

    def snapshot(self, epoch: int, store: CheckpointStore) -> list[StateFile]:
        """Step 5: save the state after ``epoch``, an Arrow IPC file per state table, a record batch per key group.

        Called right after ``process(epoch)``; actor calls run in order, so
        it sees exactly the state that epoch left.
        """
        files = []
        for name, table in self.state.snapshot().items():
            if table.num_rows == 0:
                continue
            groups = key_groups(table, self.stage.operator.keys, self.num_key_groups)
            present = np.unique(groups)
            parts = split_by_partition(table, np.searchsorted(present, groups), len(present))
            pairs = [(int(group), part) for group, part in zip(present, parts, strict=True)]
            files.append(store.write_state(epoch, self.stage.name, name, self.index, pairs))
        return files

    def restore(self, store: CheckpointStore, files: list[StateFile], watermark_ms: int, saved_key_groups: int) -> int:
        """Load the saved state of the key groups this actor owns (of any earlier parallelism).

        State saved under another ``num_key_groups`` is read whole and cut
        again by the keys' new key groups, so that no key is lost.
        """
        owned_range = key_groups_of_partition(self.index, self.num_key_groups, self.num_partitions)
        owned = set(owned_range)
        rekey = saved_key_groups != self.num_key_groups
        tables: dict[str, list[pa.Table]] = {}
        for entry in files:
            if entry.stage != self.stage.name:
                continue
            if rekey:
                table = store.read_state(entry)
                groups = key_groups(table, self.stage.operator.keys, self.num_key_groups)
                mine = (groups >= owned_range.start) & (groups < owned_range.stop)
                tables.setdefault(entry.table, []).append(table.filter(pa.array(mine)))
            elif owned.intersection(entry.key_groups):
                tables.setdefault(entry.table, []).append(store.read_state(entry, owned))
        self.state.restore({name: pa.concat_tables(parts) for name, parts in tables.items()}, watermark_ms)
        return self.state.num_rows

    def state_key_groups(self) -> list[int]:
        """The distinct key groups of the keys in this actor's state (for tests and tools)."""
        keys = self.state.keys_table()
        if keys.num_rows == 0:
            return []
        groups = key_groups(keys, self.stage.operator.keys, self.num_key_groups)
        return sorted(int(g) for g in np.unique(groups))

    def state_table(self) -> pa.Table:
        """The current value of every key (and open window) in the state."""
        return self.state.values()

    def state_rows(self) -> int:
        return self.state.num_rows

    def ping(self) -> bool:
        return True


def _concat(tables: list[pa.Table]) -> pa.Table:
    if not tables:
        return pa.table({})
    if len(tables) == 1:
        return tables[0]
    return pa.concat_tables(tables, promote_options="default")
