"""Joining two streams in event time: ``left.join(right, on=..., between=(lower, upper))``.

A left row ``l`` and a right row ``r`` match when their keys are equal and
``l.time + lower <= r.time <= l.time + upper``, both bounds inclusive. Both
sides are hash-partitioned by the key into partition actors, which keep each
side's rows as one Arrow table. Each epoch, in one partition actor:

1. The new left rows are joined with every right row held (the new ones
   included), and the held left rows with the new right rows: a hash join on
   the key (``pyarrow.Table.join``), then a vectorized filter on the times.
   Each match is emitted once, in the epoch its second row arrives.
2. The new rows join the held ones; the rows that matched are marked.
3. A row is freed once the watermark ``W`` passes the last time a row of the
   other side could still match it: a left row when ``l.time + upper < W``, a
   right row when ``r.time - lower < W``. Rows that arrive later are on time
   only at or after ``W``, so none of them could match what was freed. A
   freed row that never matched is emitted then, with nulls for the other
   side, by ``how="left"`` (left rows), ``"right"`` (right rows) or
   ``"outer"`` (both), as Spark's outer interval joins do.

The output's event time is the left row's time (the right row's, in the
left's time column, for a right-only row). It can lag the join's watermark by
``max(upper, -lower, 0)``: the stages after a join see their watermark that
much later (``KeyedOperator.output_delay_ms``), so that no row of the join is
late downstream. A row that reaches the join behind its input's watermark is
late: counted in ``metrics()["late_rows"]``, and never matched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raystream._time import to_epoch_ms
from raystream.plan.checks import check_columns
from raystream.runtime.stateful import Emitted, KeyedOperator, OperatorState, Prepared, split_table

__all__ = ["IntervalJoin", "IntervalJoinSpec"]

StreamJoinHow = Literal["inner", "left", "right", "outer"]

#: The state tables of the two sides, as checkpoints name them.
LEFT, RIGHT = "left", "right"
#: Bookkeeping columns of the held rows: a row id (unique within an actor and side), whether the row matched.
_ID, _MATCHED = "__row", "__matched"
#: The held right row's bookkeeping columns, renamed apart from the left's in the joined table.
_RIGHT_ID, _RIGHT_MATCHED = "__right_row", "__right_matched"
#: Held rows are copied into one chunk once they are spread over more chunks than this.
_MAX_CHUNKS = 16


@dataclass(frozen=True)
class IntervalJoinSpec:
    """What an interval join matches and outputs.

    Attributes:
        name: The join's name (in metrics, errors and checkpoints).
        left_on: The left's key columns; the right's keys travel and are held under these names.
        right_on: The right's key columns, in the same order.
        how: ``inner``, ``left``, ``right`` or ``outer``.
        lower_ms: The interval's lower bound, relative to the left row's time.
        upper_ms: Its upper bound.
        left_schema: The left's columns, as they reach the join.
        right_columns: Each right column in the output and its output name (a clash got the suffix).
            With ``on=``, the right's keys are not among them: they equal the left's.
        right_time: The output name of the right's time column.
        key_types: The left's key types, which the right's keys are cast to.
        coalesce_keys: ``on=``: a right-only row's keys fill the left's key columns, as SQL's ``USING`` does.
    """

    name: str
    left_on: tuple[str, ...]
    right_on: tuple[str, ...]
    how: StreamJoinHow
    lower_ms: int
    upper_ms: int
    left_time: str
    right_time: str
    left_schema: pa.Schema
    right_columns: tuple[tuple[str, str], ...]
    right_types: tuple[pa.DataType, ...]
    coalesce_keys: bool

    @property
    def right_schema(self) -> pa.Schema:
        """The right's rows as the join holds them: keys under the left's names, then the output columns."""
        keys = [self.left_schema.field(k) for k in self.left_on]
        payload = [pa.field(out, kind) for (_, out), kind in zip(self.right_columns, self.right_types, strict=True)]
        return pa.schema([*keys, *payload])

    @property
    def output_schema(self) -> pa.Schema:
        payload = self.right_schema
        return pa.schema([*self.left_schema, *(payload.field(out) for _, out in self.right_columns)])


class IntervalJoin(KeyedOperator):
    """Two streams (inputs 0 and 1) joined on equal keys within a time interval; see the module docstring."""

    num_inputs = 2

    def __init__(self, spec: IntervalJoinSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.keys = spec.left_on
        # A match's time is its left row's, up to `upper` before the right row that completes it; a right-only
        # row's is its own, freed up to `-lower` after the watermark passed it.
        self.output_delay_ms = max(spec.upper_ms, -spec.lower_ms, 0)

    @property
    def upsert_keys(self) -> tuple[str, ...] | None:
        return None  # a row per match: the output is appended

    def input_keys(self, index: int) -> tuple[str, ...]:
        return self.spec.left_on if index == 0 else self.spec.right_on

    def prepare(self, table: pa.Table, watermark_ms: int) -> Prepared:
        return self.prepare_input(0, table, watermark_ms)

    def prepare_input(self, index: int, table: pa.Table, watermark_ms: int) -> Prepared:
        spec = self.spec
        if index == 0:
            check_columns(f"join ({self.name}, left)", tuple(spec.left_schema.names), table.schema)
            rows = table.select(spec.left_schema.names)
            time = spec.left_time
        else:
            names = [column for column, _ in spec.right_columns]
            check_columns(f"join ({self.name}, right)", (*spec.right_on, *names), table.schema)
            columns = {
                left: table.column(right).cast(spec.left_schema.field(left).type)
                for left, right in zip(spec.left_on, spec.right_on, strict=True)
            }
            for column, output in spec.right_columns:
                columns[output] = table.column(column)
            rows = pa.table(columns)
            time = spec.right_time
        times = to_epoch_ms(rows.column(time))
        on_time = pc.fill_null(pc.greater_equal(times, watermark_ms), False)
        kept = rows.filter(on_time)
        late = rows.num_rows - kept.num_rows
        return Prepared(kept if kept.num_rows else None, late_count=late)

    def split(self, payload: Any, num_key_groups: int, num_partitions: int) -> list[Any | None]:
        return split_table(payload, self.keys, num_key_groups, num_partitions)

    def new_state(self) -> OperatorState:
        return _IntervalJoinState(self.spec)


class _IntervalJoinState(OperatorState):
    """One partition actor's held rows of both sides, each with a row id and whether it matched."""

    def __init__(self, spec: IntervalJoinSpec) -> None:
        self.spec = spec
        self.left = _held(spec.left_schema.empty_table(), 0)
        self.right = _held(spec.right_schema.empty_table(), 0)
        self.next_id = 0

    def process(self, payloads: Sequence[Any], watermark_ms: int, end_of_input: bool) -> Emitted:
        return self.process_inputs([list(payloads), []], watermark_ms, end_of_input)

    def process_inputs(self, payloads: Sequence[Sequence[Any]], watermark_ms: int, end_of_input: bool) -> Emitted:
        spec = self.spec
        new_left = self._take(payloads[0], spec.left_schema)
        new_right = self._take(payloads[1], spec.right_schema)
        outputs: list[pa.Table] = []
        matched_left: list[pa.Array] = []
        matched_right: list[pa.Array] = []
        # 1. New left rows against every right row; held left rows against the new right rows.
        everything_right = _concat([self.right, new_right])
        for left, right in ((new_left, everything_right), (self.left, new_right)):
            if left.num_rows and right.num_rows:
                pairs = self._match(left, right)
                if pairs.num_rows:
                    outputs.append(pairs.select(spec.output_schema.names))
                    matched_left.append(pairs.column(_ID).combine_chunks())
                    matched_right.append(pairs.column(_RIGHT_ID).combine_chunks())
        # 2. Hold the new rows; mark what matched.
        self.left = _mark(_concat([self.left, new_left]), matched_left)
        self.right = _mark(everything_right, matched_right)
        # 3. Free what the watermark passed; emit the unmatched rows of the outer sides.
        left_times = to_epoch_ms(self.left.column(spec.left_time))
        free_left = pc.less(pc.add(left_times, spec.upper_ms), watermark_ms)
        right_times = to_epoch_ms(self.right.column(spec.right_time))
        free_right = pc.less(pc.subtract(right_times, spec.lower_ms), watermark_ms)
        if spec.how in ("left", "outer"):
            outputs.append(self._left_only(self.left.filter(pc.and_(free_left, pc.invert(self.left[_MATCHED])))))
        if spec.how in ("right", "outer"):
            outputs.append(self._right_only(self.right.filter(pc.and_(free_right, pc.invert(self.right[_MATCHED])))))
        self.left = _compact(self.left.filter(pc.invert(free_left)))
        self.right = _compact(self.right.filter(pc.invert(free_right)))
        present = [t for t in outputs if t.num_rows]
        if not present:
            return Emitted(None)
        return Emitted(present[0] if len(present) == 1 else pa.concat_tables(present))

    def _take(self, payloads: Sequence[Any], schema: pa.Schema) -> pa.Table:
        """This epoch's rows of one side, with fresh row ids, not matched yet."""
        present = [p for p in payloads if p is not None and p.num_rows]
        rows = _concat(present) if present else schema.empty_table()
        held = _held(rows, self.next_id)
        self.next_id += rows.num_rows
        return held

    def _match(self, left: pa.Table, right: pa.Table) -> pa.Table:
        """The pairs of equal keys whose times fall in the interval (nulls never match)."""
        spec = self.spec
        right = right.rename_columns(
            [{_ID: _RIGHT_ID, _MATCHED: _RIGHT_MATCHED}.get(name, name) for name in right.column_names]
        )
        pairs = left.join(right, keys=list(spec.left_on), join_type="inner", use_threads=False, coalesce_keys=True)
        if pairs.num_rows == 0:
            return pairs
        left_ms = to_epoch_ms(pairs.column(spec.left_time))
        right_ms = to_epoch_ms(pairs.column(spec.right_time))
        within = pc.and_(
            pc.greater_equal(right_ms, pc.add(left_ms, spec.lower_ms)),
            pc.less_equal(right_ms, pc.add(left_ms, spec.upper_ms)),
        )
        return pairs.filter(within)

    def _left_only(self, rows: pa.Table) -> pa.Table:
        """Left rows that matched nothing, with nulls for the right's columns."""
        schema = self.spec.output_schema
        columns = [
            rows.column(field.name)
            if field.name in self.spec.left_schema.names
            else pa.nulls(rows.num_rows, field.type)
            for field in schema
        ]
        return pa.Table.from_arrays(columns, schema=schema)

    def _right_only(self, rows: pa.Table) -> pa.Table:
        """Right rows that matched nothing: the left's columns null but the keys (with ``on=``) and the time."""
        spec = self.spec
        payload = {out for _, out in spec.right_columns}
        columns = []
        for field in spec.output_schema:
            if field.name in payload:
                columns.append(rows.column(field.name))
            elif field.name == spec.left_time:
                columns.append(_as_time(rows.column(spec.right_time), field.type))
            elif field.name in spec.left_on and spec.coalesce_keys:
                columns.append(rows.column(field.name))
            else:
                columns.append(pa.nulls(rows.num_rows, field.type))
        return pa.Table.from_arrays(columns, schema=spec.output_schema)

    @property
    def num_rows(self) -> int:
        return self.left.num_rows + self.right.num_rows

    def state_by_input(self) -> dict[str, Any]:
        times = [
            pc.min(to_epoch_ms(rows.column(column))).as_py()
            for rows, column in ((self.left, self.spec.left_time), (self.right, self.spec.right_time))
            if rows.num_rows
        ]
        known = [t for t in times if t is not None]
        return {
            "left_rows": self.left.num_rows,
            "right_rows": self.right.num_rows,
            "oldest_time_ms": min(known) if known else None,
        }

    def keys_table(self) -> pa.Table:
        keys = list(self.spec.left_on)
        return _concat([self.left.select(keys), self.right.select(keys)])

    def values(self) -> pa.Table:
        return _concat([self._left_only(self.left), self._right_only(self.right)])

    def snapshot(self) -> dict[str, pa.Table]:
        return {LEFT: self.left.drop_columns([_ID]), RIGHT: self.right.drop_columns([_ID])}

    def restore(self, tables: dict[str, pa.Table], watermark_ms: int) -> None:
        """Take back the held rows of both sides, with new row ids (they are unique within an actor only)."""
        left = tables.get(LEFT)
        right = tables.get(RIGHT)
        self.next_id = 0
        if left is not None:
            self.left = _with_ids(left, 0)
            self.next_id = left.num_rows
        if right is not None:
            self.right = _with_ids(right, self.next_id)
            self.next_id += right.num_rows


def _held(rows: pa.Table, first_id: int) -> pa.Table:
    """``rows`` as held: with row ids from ``first_id`` and not matched."""
    return _with_ids(rows.append_column(_MATCHED, pa.array(np.zeros(rows.num_rows, dtype=bool))), first_id)


def _with_ids(rows: pa.Table, first_id: int) -> pa.Table:
    ids = pa.array(np.arange(first_id, first_id + rows.num_rows, dtype=np.int64))
    return rows.append_column(_ID, ids)


def _mark(rows: pa.Table, matched: list[pa.Array]) -> pa.Table:
    """``rows`` with the rows whose id is in ``matched`` marked as matched."""
    if not matched or rows.num_rows == 0:
        return rows
    ids = pa.concat_arrays(matched)
    flags = pc.or_(rows.column(_MATCHED), pc.is_in(rows.column(_ID), value_set=ids))
    return rows.set_column(rows.schema.get_field_index(_MATCHED), _MATCHED, flags)


def _compact(rows: pa.Table) -> pa.Table:
    """``rows`` in one chunk once they are in many: each epoch adds a chunk, and filters keep them apart."""
    return rows.combine_chunks() if rows.num_columns and rows.column(0).num_chunks > _MAX_CHUNKS else rows


def _as_time(column: pa.ChunkedArray, kind: pa.DataType) -> pa.ChunkedArray | pa.Array:
    """A time column (a timestamp or int64 ms) as type ``kind`` (the left's time type)."""
    if column.type == kind:
        return column
    millis = to_epoch_ms(column)
    if pa.types.is_int64(kind):
        return millis
    return pc.cast(pc.cast(millis, pa.timestamp("ms", tz=getattr(kind, "tz", None))), kind)


def _concat(tables: list[pa.Table]) -> pa.Table:
    tables = [t for t in tables if t.num_columns]
    if len(tables) == 1:
        return tables[0]
    return pa.concat_tables(tables, promote_options="default")
