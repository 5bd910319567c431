"""Reader and partition actors: where rows live and are processed.

Both kinds return ``[metadata, *outputs, late]`` from each epoch call (just
the metadata when the output is written in the actor and no late rows can
come). ``late`` is ``{operator name: late rows}`` or ``None``. The
metadata is a small dict the coordinator reads; the outputs are tables or
partials that stay in the Ray object store and are handed, as object refs,
to the next stage's actors or to a driver-side sink. A distributed sink
writes inside the actor, and only its small result rides in the metadata.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from raystream._time import START_OF_TIME_MS
from raystream.kernels.hashing import key_groups, key_groups_of_partition, split_by_partition
from raystream.plan.checks import check_columns
from raystream.runtime.checkpoint import CheckpointStore, StateFile
from raystream.runtime.operators import OpContext, StatelessOp, run_chain
from raystream.runtime.planner import DEAD_LETTERS, KeyedStage
from raystream.runtime.stateful import KeyedOperator, OperatorState
from raystream.sinks.base import Sink
from raystream.sources.base import Source, Split, SplitReader


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
class Downstream:
    """Where an actor's output goes.

    At most one of ``operator`` (the next keyed stage: prepare and shuffle
    over ``num_partitions`` actors) and ``sink`` (a distributed sink: write
    here) is set; with neither, the table is returned for a driver-side
    sink, unless ``discard`` (the job outputs late rows instead).
    """

    operator: KeyedOperator | None = None
    num_partitions: int = 1
    num_key_groups: int = 128
    sink: Sink | None = None
    discard: bool = False

    @property
    def num_outputs(self) -> int:
        """How many output refs an epoch call returns after the metadata (before a late slot)."""
        if self.operator is not None:
            return self.num_partitions
        return 0 if self.sink is not None or self.discard else 1


@dataclass
class _Routed:
    outputs: list[Any]
    late: dict[str, pa.Table]
    late_count: int
    sink_result: Any


def _route(table: pa.Table, downstream: Downstream, epoch: int, writer: int, watermark_ms: int) -> _Routed:
    """Send ``table`` on, to the next stage (prepared and split), a sink, or the driver."""
    operator = downstream.operator
    if operator is not None:
        if table.num_rows == 0:
            return _Routed([None] * downstream.num_partitions, {}, 0, None)
        check_columns(f"key_by ({operator.name})", operator.keys, table.schema)
        prepared = operator.prepare(table, watermark_ms)
        outputs = (
            [None] * downstream.num_partitions
            if prepared.payload is None
            else operator.split(prepared.payload, downstream.num_key_groups, downstream.num_partitions)
        )
        late = {operator.name: prepared.late} if prepared.late is not None else {}
        return _Routed(outputs, late, prepared.late_count, None)
    if downstream.sink is not None:
        result = downstream.sink.write(table, epoch, writer) if table.num_rows else None
        return _Routed([], {}, 0, result)
    if downstream.discard:
        return _Routed([], {}, 0, None)
    return _Routed([table if table.num_rows else None], {}, 0, None)


def _returns(meta: dict[str, Any], routed: _Routed, side_slot: bool, extra_late: dict[str, pa.Table]) -> Any:
    """Lay out an epoch call's return: ``[meta, *outputs, late]``, or the metadata alone."""
    values: list[Any] = [meta, *routed.outputs]
    if side_slot:
        late = {**extra_late, **routed.late}
        values.append(late or None)
    return values if len(values) > 1 else meta


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

    def __init__(
        self, index: int, source: Source, chain: tuple[StatelessOp, ...], downstream: Downstream, side_slot: bool
    ) -> None:
        use_system_allocator()
        self.index = index
        self.source = source
        self.chain = chain
        self.downstream = downstream
        self.side_slot = side_slot
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
        watermark_ms: int,
        phase: int = 0,
        replay: dict[str, dict[str, Any]] | None = None,
    ) -> list[Any] | dict[str, Any]:
        """Read, transform and route one epoch. Returns ``[metadata, *outputs, side outputs]``, or the metadata alone.

        Args:
            epoch: The epoch id.
            max_rows: The most rows to read, over all splits.
            watermark_ms: The watermark before this epoch, to tell late rows.
            phase: Read only splits of this phase or earlier (see ``Split.phase``).
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
            if state.done or (budget <= 0 or state.split.phase > phase if replay is None else logged is None):
                continue
            assert state.reader is not None
            given = budget if logged is None else logged["budget"]
            if logged is None:
                batch = state.reader.next_batch(given)
            else:
                batch = state.reader.read_until(logged["position"], given)
            ctx = OpContext(epoch, f"split {state.split.split_id!r}", split_id=state.split.split_id)
            letters = state.reader.take_dead_letters()
            if letters is not None and letters.num_rows:
                dead_letters.append(letters)
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
        routed = _route(table, self.downstream, epoch, self.index, watermark_ms)
        meta = {
            "kind": "reader",
            "actor": f"reader-{self.index}",
            "node_id": self.node_id,
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
            "sink_result": routed.sink_result,
            "seconds": time.perf_counter() - started,
            "cpu_seconds": time.process_time() - cpu_started,
        }
        sides = {DEAD_LETTERS: pa.concat_tables(dead_letters)} if dead_letters else {}
        return _returns(meta, routed, self.side_slot, sides)

    def ping(self) -> bool:
        return True


class PartitionActor:
    """Holds the keyed state of the key groups it owns and applies a keyed stage to it."""

    def __init__(
        self,
        stage: KeyedStage,
        index: int,
        num_partitions: int,
        num_key_groups: int,
        downstream: Downstream,
        side_slot: bool,
    ) -> None:
        use_system_allocator()
        self.stage = stage
        self.index = index
        self.num_partitions = num_partitions
        self.num_key_groups = num_key_groups
        self.downstream = downstream
        self.side_slot = side_slot
        self.state: OperatorState = stage.operator.new_state()
        self.previous_watermark_ms = START_OF_TIME_MS
        self.node_id = ray.get_runtime_context().get_node_id()

    def process(self, epoch: int, watermark_ms: int, end_of_input: bool, *parts: Any) -> list[Any] | dict[str, Any]:
        """Merge this epoch's payloads into the state, fire by the watermark, and route the output.

        Returns ``[metadata, *outputs, late]``, or the metadata alone.
        """
        started, cpu_started = time.perf_counter(), time.process_time()
        incoming = [p for p in parts if p is not None]
        emitted = self.state.process(incoming, watermark_ms, end_of_input)
        ctx = OpContext(epoch, f"partition {self.index} of {self.stage.name!r}")
        table = run_chain(self.stage.chain, emitted.table, ctx) if emitted.table is not None else pa.table({})
        # The next stage tells late rows by the watermark before this epoch, as the readers do.
        routed = _route(table, self.downstream, epoch, self.index, self.previous_watermark_ms)
        self.previous_watermark_ms = watermark_ms
        own_late = {self.stage.name: emitted.late} if emitted.late is not None else {}
        meta = {
            "kind": "partition",
            "actor": f"{self.stage.name}-{self.index}",
            "node_id": self.node_id,
            "stage": self.stage.name,
            "index": self.index,
            "rows_in": sum(getattr(p, "num_rows", 0) for p in incoming),
            "rows_out": table.num_rows,
            "state_rows": self.state.num_rows,
            "late_count": emitted.late_count + routed.late_count,
            "sink_result": routed.sink_result,
            "seconds": time.perf_counter() - started,
            "cpu_seconds": time.process_time() - cpu_started,
        }
        return _returns(meta, routed, self.side_slot, own_late)

    def snapshot(self, epoch: int, store: CheckpointStore) -> list[StateFile]:
        """Save the state after ``epoch``: one Arrow IPC file per state table, a record batch per key group.

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
        self.previous_watermark_ms = watermark_ms
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
